//! Bulkhead: a bound on how many calls run at once, so one slow dependency
//! or one noisy tenant cannot take every worker with it.
//!
//! A [`Bulkhead`] holds `max_concurrent` permits. A call that finds none
//! free waits in a queue of at most `max_queue` callers for at most
//! `max_wait`; past either bound it is refused at once with [`BulkheadFull`]
//! — a bulkhead never makes a caller hang. Waiters are served in arrival
//! order, and a newcomer never takes a permit ahead of a waiter.
//!
//! Dropping a call at any point (queued, or running with a permit) gives its
//! queue slot or permit back exactly once, because both are owned by guards
//! that release on drop.
//!
//! [`BulkheadLayer`] applies one bulkhead to a tower service;
//! [`KeyedBulkhead`] and [`KeyedBulkheadLayer`] keep one bulkhead per key
//! (tenant, route, upstream) with a bound on how many keys are remembered.

mod keyed;
mod service;

pub use keyed::{
    KeyedBulkhead, KeyedBulkheadConfig, KeyedBulkheadEvent, KeyedBulkheadLayer,
    KeyedBulkheadService, KeyedBulkheadSnapshot, KeyedResponseFuture,
};
pub use service::{BulkheadLayer, BulkheadService, ResponseFuture};

use crate::observe::EventStream;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A call refused because every permit was taken and the wait queue was full,
/// or the call waited longer than the bulkhead's maximum wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("bulkhead is full")]
pub struct BulkheadFull;

/// How big a bulkhead is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkheadConfig {
    /// Calls that may run at once (at least 1).
    pub max_concurrent: usize,
    /// Calls that may wait for a permit; `0` refuses at once when full.
    pub max_queue: usize,
    /// How long a queued call waits before it is refused; zero disables the queue.
    pub max_wait: Duration,
}

impl BulkheadConfig {
    /// `max_concurrent` calls at once and no waiting.
    pub fn new(max_concurrent: usize) -> Self {
        BulkheadConfig {
            max_concurrent,
            max_queue: 0,
            max_wait: Duration::ZERO,
        }
    }

    /// The same bulkhead with a wait queue of `max_queue` callers, each
    /// waiting at most `max_wait`.
    pub fn with_queue(mut self, max_queue: usize, max_wait: Duration) -> Self {
        self.max_queue = max_queue;
        self.max_wait = max_wait;
        self
    }

    /// Checks the bounds, naming the one that is wrong.
    pub fn validate(&self) -> Result<(), BulkheadConfigError> {
        if self.max_concurrent == 0 {
            return Err(BulkheadConfigError::ZeroConcurrency);
        }
        if self.max_concurrent > Semaphore::MAX_PERMITS {
            return Err(BulkheadConfigError::TooManyPermits {
                max_concurrent: self.max_concurrent,
                limit: Semaphore::MAX_PERMITS,
            });
        }
        Ok(())
    }

    fn queues(&self) -> bool {
        self.max_queue > 0 && !self.max_wait.is_zero()
    }
}

/// A bulkhead configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BulkheadConfigError {
    /// `max_concurrent` was zero, which would refuse every call.
    #[error("bulkhead max_concurrent must be at least 1")]
    ZeroConcurrency,
    /// `max_concurrent` was beyond what the semaphore can count.
    #[error("bulkhead max_concurrent {max_concurrent} exceeds the limit of {limit}")]
    TooManyPermits {
        /// The configured value.
        max_concurrent: usize,
        /// The largest value allowed.
        limit: usize,
    },
    /// A keyed bulkhead was given `max_keys = 0`.
    #[error("keyed bulkhead max_keys must be at least 1")]
    ZeroKeys,
}

/// Something a bulkhead did that is not an ordinary admitted call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkheadEvent {
    /// A call was refused at once: every permit was taken and the wait
    /// queue was full (or the bulkhead has no queue).
    QueueFull,
    /// A call waited `waited` in the queue without getting a permit.
    QueueTimeout {
        /// How long it waited (the configured `max_wait`).
        waited: Duration,
    },
    /// A [`KeyedBulkhead`] met a new key while remembering as many keys as
    /// it may, all of them busy, so the call was refused.
    KeysExhausted,
}

/// A bulkhead's state now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BulkheadSnapshot {
    /// Permits held by running calls.
    pub in_use: usize,
    /// Calls waiting for a permit.
    pub queued: usize,
    /// Permits in all (`max_concurrent`).
    pub capacity: usize,
    /// Room in the wait queue (`max_queue`).
    pub max_queue: usize,
    /// Calls refused because the queue was full, since the bulkhead was made.
    pub rejected: u64,
    /// Calls refused after waiting `max_wait`, since the bulkhead was made.
    pub timed_out: u64,
}

/// Why a call got no permit; the public error is always [`BulkheadFull`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    QueueFull,
    Timeout(Duration),
}

impl Refusal {
    pub(crate) fn event(self) -> BulkheadEvent {
        match self {
            Refusal::QueueFull => BulkheadEvent::QueueFull,
            Refusal::Timeout(waited) => BulkheadEvent::QueueTimeout { waited },
        }
    }
}

/// A bulkhead, shared by every clone.
#[derive(Debug, Clone)]
pub struct Bulkhead {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    semaphore: Arc<Semaphore>,
    config: BulkheadConfig,
    queued: AtomicUsize,
    rejected: AtomicU64,
    timed_out: AtomicU64,
    /// `None` for the per-key bulkheads of a [`KeyedBulkhead`], which
    /// reports for them with the key attached.
    events: Option<EventStream<BulkheadEvent>>,
}

/// The right to run one call; dropping it frees the permit.
#[derive(Debug)]
#[must_use = "the permit is released as soon as it is dropped"]
pub struct BulkheadPermit {
    _permit: OwnedSemaphorePermit,
}

/// A reserved place in a bulkhead's wait queue, freed on drop.
#[derive(Debug)]
pub(crate) struct QueueSlot {
    bulkhead: Bulkhead,
}

impl Drop for QueueSlot {
    fn drop(&mut self) {
        self.bulkhead.shared.queued.fetch_sub(1, Ordering::AcqRel);
    }
}

impl QueueSlot {
    /// Waits for a permit, up to the bulkhead's `max_wait`. The slot is
    /// held (and counted as queued) until the wait ends or is dropped.
    pub(crate) async fn wait(self) -> Result<BulkheadPermit, Refusal> {
        let shared = &self.bulkhead.shared;
        let max_wait = shared.config.max_wait;
        let acquire = shared.semaphore.clone().acquire_owned();
        let outcome = tokio::time::timeout(max_wait, acquire).await;
        match outcome {
            Ok(Ok(permit)) => Ok(BulkheadPermit { _permit: permit }),
            // The semaphore is never closed; treat it as full if it ever is.
            Ok(Err(_closed)) => {
                shared.rejected.fetch_add(1, Ordering::Relaxed);
                Err(Refusal::QueueFull)
            }
            Err(_elapsed) => {
                shared.timed_out.fetch_add(1, Ordering::Relaxed);
                Err(Refusal::Timeout(max_wait))
            }
        }
    }
}

impl Bulkhead {
    /// A bulkhead with its own event stream.
    pub fn new(config: BulkheadConfig) -> Result<Self, BulkheadConfigError> {
        Self::build(config, Some(EventStream::default()))
    }

    /// A bulkhead that publishes no events (its owner reports for it).
    pub(crate) fn unobserved(config: BulkheadConfig) -> Result<Self, BulkheadConfigError> {
        Self::build(config, None)
    }

    fn build(
        config: BulkheadConfig,
        events: Option<EventStream<BulkheadEvent>>,
    ) -> Result<Self, BulkheadConfigError> {
        config.validate()?;
        Ok(Bulkhead {
            shared: Arc::new(Shared {
                semaphore: Arc::new(Semaphore::new(config.max_concurrent)),
                config,
                queued: AtomicUsize::new(0),
                rejected: AtomicU64::new(0),
                timed_out: AtomicU64::new(0),
                events,
            }),
        })
    }

    /// Takes a permit, waiting in the queue if every permit is taken and
    /// the queue has room. Refused at once when the queue is full, or after
    /// `max_wait` in the queue. Cancel-safe: dropping the future while it
    /// waits frees its queue slot.
    pub async fn acquire(&self) -> Result<BulkheadPermit, BulkheadFull> {
        if let Some(permit) = self.try_permit() {
            return Ok(permit);
        }
        let outcome = match self.reserve() {
            Ok(slot) => slot.wait().await,
            Err(refusal) => Err(refusal),
        };
        outcome.map_err(|refusal| {
            self.report(refusal);
            BulkheadFull
        })
    }

    /// Takes a permit if one is free now, without queueing.
    pub fn try_acquire(&self) -> Result<BulkheadPermit, BulkheadFull> {
        self.try_permit().ok_or(BulkheadFull)
    }

    /// The state now.
    pub fn snapshot(&self) -> BulkheadSnapshot {
        let shared = &self.shared;
        let capacity = shared.config.max_concurrent;
        BulkheadSnapshot {
            in_use: capacity.saturating_sub(shared.semaphore.available_permits()),
            queued: shared.queued.load(Ordering::Acquire),
            capacity,
            max_queue: shared.config.max_queue,
            rejected: shared.rejected.load(Ordering::Relaxed),
            timed_out: shared.timed_out.load(Ordering::Relaxed),
        }
    }

    /// The configuration it was made with.
    pub fn config(&self) -> BulkheadConfig {
        self.shared.config
    }

    /// Rejections and queue timeouts, as they happen. Admitted calls
    /// publish nothing.
    pub fn events(&self) -> Option<&EventStream<BulkheadEvent>> {
        self.shared.events.as_ref()
    }

    pub(crate) fn try_permit(&self) -> Option<BulkheadPermit> {
        // Tokio's semaphore hands released permits to waiters first, so a
        // newcomer succeeding here never jumps the queue.
        let permit = self.shared.semaphore.clone().try_acquire_owned().ok()?;
        Some(BulkheadPermit { _permit: permit })
    }

    /// Reserves a place in the wait queue, or refuses when it is full.
    pub(crate) fn reserve(&self) -> Result<QueueSlot, Refusal> {
        let shared = &self.shared;
        let max_queue = shared.config.max_queue;
        let reserved = shared.config.queues()
            && shared
                .queued
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                    (q < max_queue).then_some(q + 1)
                })
                .is_ok();
        if !reserved {
            shared.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::QueueFull);
        }
        Ok(QueueSlot {
            bulkhead: self.clone(),
        })
    }

    /// No permit held and nobody waiting: forgetting it loses nothing.
    pub(crate) fn is_idle(&self) -> bool {
        let shared = &self.shared;
        shared.queued.load(Ordering::Acquire) == 0
            && shared.semaphore.available_permits() == shared.config.max_concurrent
    }

    fn report(&self, refusal: Refusal) {
        if let Some(events) = &self.shared.events {
            events.emit(refusal.event());
        }
    }

    /// [`acquire`](Self::acquire) on an owned handle, for services that
    /// must store the future.
    pub(crate) async fn acquire_owned(self) -> Result<BulkheadPermit, BulkheadFull> {
        self.acquire().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_errors_name_the_bad_bound() {
        assert_eq!(
            Bulkhead::new(BulkheadConfig::new(0)).err(),
            Some(BulkheadConfigError::ZeroConcurrency)
        );
        let too_many = BulkheadConfig::new(usize::MAX).validate();
        assert!(
            matches!(too_many, Err(BulkheadConfigError::TooManyPermits { .. })),
            "{too_many:?}"
        );
        assert!(BulkheadConfig::new(1).validate().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn queue_without_wait_refuses_at_once() {
        // A queue with zero wait would only delay a certain refusal.
        let config = BulkheadConfig::new(1).with_queue(10, Duration::ZERO);
        let bulkhead = Bulkhead::new(config).unwrap();
        let _held = bulkhead.acquire().await.unwrap();
        assert_eq!(bulkhead.acquire().await.err(), Some(BulkheadFull));
        assert_eq!(bulkhead.snapshot().rejected, 1);
        assert_eq!(bulkhead.snapshot().queued, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn release_goes_to_the_waiter_not_a_newcomer() {
        let config = BulkheadConfig::new(1).with_queue(1, Duration::from_secs(5));
        let bulkhead = Bulkhead::new(config).unwrap();
        let held = bulkhead.acquire().await.unwrap();
        let b = bulkhead.clone();
        let waiter = tokio::spawn(async move { b.acquire().await.map(|_| ()) });
        tokio::task::yield_now().await;
        assert_eq!(bulkhead.snapshot().queued, 1);
        drop(held);
        assert_eq!(bulkhead.try_acquire().err(), Some(BulkheadFull));
        assert_eq!(waiter.await.unwrap(), Ok(()));
    }
}
