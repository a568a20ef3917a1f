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
mod permits;
mod service;

pub use keyed::{
    KeyedBulkhead, KeyedBulkheadConfig, KeyedBulkheadEvent, KeyedBulkheadLayer,
    KeyedBulkheadService, KeyedBulkheadSnapshot, KeyedResponseFuture,
};
pub use service::{BulkheadLayer, BulkheadService, ResponseFuture};

use crate::observe::EventStream;
use permits::{Enqueued, Permits, Waiter, MAX_PERMITS};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
        if self.max_concurrent > MAX_PERMITS {
            return Err(BulkheadConfigError::TooManyPermits {
                max_concurrent: self.max_concurrent,
                limit: MAX_PERMITS,
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

/// A caller's place after [`Bulkhead::reserve`].
pub(crate) enum Reserved {
    /// A permit came free meanwhile.
    Permit(BulkheadPermit),
    /// Waiting in line.
    Queued(QueueSlot),
}

/// A bulkhead, shared by every clone.
#[derive(Debug, Clone)]
pub struct Bulkhead {
    shared: Arc<Shared>,
}

struct Shared {
    permits: Permits,
    config: BulkheadConfig,
    rejected: AtomicU64,
    timed_out: AtomicU64,
    /// `None` for the per-key bulkheads of a [`KeyedBulkhead`], which
    /// reports for them with the key attached.
    events: Option<EventStream<BulkheadEvent>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bulkhead")
            .field("config", &self.config)
            .field("available", &self.permits.available())
            .field("queued", &self.permits.waiting())
            .finish_non_exhaustive()
    }
}

/// The right to run one call; dropping it frees the permit.
#[derive(Debug)]
#[must_use = "the permit is released as soon as it is dropped"]
pub struct BulkheadPermit {
    bulkhead: Bulkhead,
}

impl Drop for BulkheadPermit {
    fn drop(&mut self) {
        self.bulkhead.shared.permits.release();
    }
}

/// A place in a bulkhead's wait queue, given up on drop.
pub(crate) struct QueueSlot {
    bulkhead: Bulkhead,
    /// `None` once the slot has turned into a permit or a refusal.
    waiter: Option<Arc<Waiter>>,
}

impl std::fmt::Debug for QueueSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueSlot").finish_non_exhaustive()
    }
}

impl Drop for QueueSlot {
    fn drop(&mut self) {
        if let Some(waiter) = self.waiter.take() {
            // Handed a permit just as we gave up: give it back.
            if self.bulkhead.shared.permits.leave(&waiter) {
                self.bulkhead.shared.permits.release();
            }
        }
    }
}

impl QueueSlot {
    /// Waits for a permit, up to the bulkhead's `max_wait`. The slot is
    /// held (and counted as queued) until the wait ends or is dropped.
    pub(crate) async fn wait(mut self) -> Result<BulkheadPermit, Refusal> {
        let Some(waiter) = self.waiter.clone() else {
            return Err(Refusal::QueueFull);
        };
        let max_wait = self.bulkhead.shared.config.max_wait;
        let outcome = tokio::time::timeout(max_wait, waiter.granted()).await;
        // From here the slot is settled: dropping it must not leave again.
        self.waiter = None;
        let shared = &self.bulkhead.shared;
        // A permit handed over as the timer fired is still taken.
        if outcome.is_ok() || shared.permits.leave(&waiter) {
            return Ok(BulkheadPermit {
                bulkhead: self.bulkhead.clone(),
            });
        }
        shared.timed_out.fetch_add(1, Ordering::Relaxed);
        Err(Refusal::Timeout(max_wait))
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
                permits: Permits::new(config.max_concurrent),
                config,
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
            Ok(Reserved::Permit(permit)) => Ok(permit),
            Ok(Reserved::Queued(slot)) => slot.wait().await,
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
            in_use: capacity.saturating_sub(shared.permits.available()),
            queued: shared.permits.waiting(),
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

    /// A permit if one is free and nobody waits for one (so a newcomer
    /// never jumps the queue).
    #[inline]
    pub(crate) fn try_permit(&self) -> Option<BulkheadPermit> {
        self.shared.permits.try_acquire().then(|| BulkheadPermit {
            bulkhead: self.clone(),
        })
    }

    /// Reserves a place in the wait queue, or refuses when it is full. A
    /// permit freed since [`try_permit`](Self::try_permit) failed is taken
    /// at once: the slot then resolves without waiting.
    pub(crate) fn reserve(&self) -> Result<Reserved, Refusal> {
        let shared = &self.shared;
        let max_queue = if shared.config.queues() {
            shared.config.max_queue
        } else {
            0
        };
        match shared.permits.enqueue(max_queue) {
            Enqueued::Granted => Ok(Reserved::Permit(BulkheadPermit {
                bulkhead: self.clone(),
            })),
            Enqueued::Waiting(waiter) => Ok(Reserved::Queued(QueueSlot {
                bulkhead: self.clone(),
                waiter: Some(waiter),
            })),
            Enqueued::Full => {
                shared.rejected.fetch_add(1, Ordering::Relaxed);
                Err(Refusal::QueueFull)
            }
        }
    }

    /// No permit held and nobody waiting: forgetting it loses nothing.
    pub(crate) fn is_idle(&self) -> bool {
        let shared = &self.shared;
        shared.permits.waiting() == 0 && shared.permits.available() == shared.config.max_concurrent
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
