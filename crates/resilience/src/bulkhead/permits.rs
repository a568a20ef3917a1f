//! The bulkhead's counting semaphore.
//!
//! Why not tokio's `Semaphore`: its release always takes the wait-list
//! mutex, even when nobody waits, and a bulkhead releases once per call.
//! Here the free permits and the number of waiters share one atomic word,
//! so a call that finds a permit free and gives it back touches that word
//! twice and nothing else. Only when someone waits does a release take the
//! lock, and then it hands its permit straight to the oldest waiter.
//!
//! The invariants that make this sound:
//! - the waiter count changes only under the wait-list lock, and always
//!   equals the wait list's length there;
//! - while anyone waits no permit is free: a release with waiters hands its
//!   permit over instead of freeing it, and a caller that arrives to queue
//!   takes a free permit rather than queueing. So a newcomer can never take
//!   a permit ahead of a waiter (the fast path refuses whenever anyone
//!   waits), and no permit is ever stranded while a waiter sleeps.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

const AVAILABLE: u64 = u32::MAX as u64;
const ONE_WAITER: u64 = 1 << 32;

/// The most permits, and the longest queue, one bulkhead can count.
pub(crate) const MAX_PERMITS: usize = u32::MAX as usize;

pub(crate) struct Permits {
    /// Free permits in the low 32 bits, waiters in the high 32.
    state: AtomicU64,
    waiters: Mutex<VecDeque<Arc<Waiter>>>,
}

/// One queued caller. Its slot's `granted` flag and waker change together
/// under one lock, so a grant can never slip between a poll's check and
/// its storing of the waker.
#[derive(Default)]
pub(crate) struct Waiter {
    slot: Mutex<WaiterSlot>,
}

#[derive(Default)]
struct WaiterSlot {
    granted: bool,
    waker: Option<Waker>,
}

/// What a caller that could not take a permit at once got instead.
pub(crate) enum Enqueued {
    /// A permit came free meanwhile; it is the caller's.
    Granted,
    /// The caller waits in line.
    Waiting(Arc<Waiter>),
    /// The line is full.
    Full,
}

fn free(state: u64) -> u64 {
    state & AVAILABLE
}

fn waiting(state: u64) -> u64 {
    state >> 32
}

impl Permits {
    pub(crate) fn new(permits: usize) -> Self {
        let permits = permits.min(MAX_PERMITS) as u64;
        Permits {
            state: AtomicU64::new(permits),
            waiters: Mutex::new(VecDeque::new()),
        }
    }

    /// Takes a free permit if nobody waits for one.
    #[inline]
    pub(crate) fn try_acquire(&self) -> bool {
        let mut state = self.state.load(Ordering::Relaxed);
        loop {
            if free(state) == 0 || waiting(state) != 0 {
                return false;
            }
            match self.state.compare_exchange_weak(
                state,
                state - 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => state = actual,
            }
        }
    }

    /// Gives one permit back: to the oldest waiter if there is one.
    #[inline]
    pub(crate) fn release(&self) {
        let mut state = self.state.load(Ordering::Relaxed);
        loop {
            if waiting(state) != 0 {
                return self.hand_over();
            }
            match self.state.compare_exchange_weak(
                state,
                state + 1,
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(actual) => state = actual,
            }
        }
    }

    #[cold]
    fn hand_over(&self) {
        let mut waiters = self.waiters.lock();
        match waiters.pop_front() {
            Some(waiter) => {
                self.state.fetch_sub(ONE_WAITER, Ordering::AcqRel);
                drop(waiters);
                waiter.grant();
            }
            // The last waiter left between our look and the lock.
            None => {
                self.state.fetch_add(1, Ordering::AcqRel);
            }
        }
    }

    /// Joins the line, unless a permit is free now (then it is taken) or
    /// `max_queue` callers already wait.
    pub(crate) fn enqueue(&self, max_queue: usize) -> Enqueued {
        let max_queue = max_queue.min(MAX_PERMITS) as u64;
        let mut waiters = self.waiters.lock();
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            let next = if free(state) > 0 {
                // Nobody waits whenever a permit is free (see the module
                // docs), so taking it jumps no queue.
                state - 1
            } else if waiting(state) < max_queue {
                state + ONE_WAITER
            } else {
                return Enqueued::Full;
            };
            match self
                .state
                .compare_exchange(state, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) if next < state => return Enqueued::Granted,
                Ok(_) => break,
                Err(actual) => state = actual,
            }
        }
        let waiter = Arc::new(Waiter::default());
        waiters.push_back(waiter.clone());
        Enqueued::Waiting(waiter)
    }

    /// Takes `waiter` out of the line. Returns `true` if it had already been
    /// handed a permit, which the caller then owns.
    pub(crate) fn leave(&self, waiter: &Arc<Waiter>) -> bool {
        let mut waiters = self.waiters.lock();
        if let Some(at) = waiters.iter().position(|w| Arc::ptr_eq(w, waiter)) {
            waiters.remove(at);
            self.state.fetch_sub(ONE_WAITER, Ordering::AcqRel);
            return false;
        }
        // Not in line: a release popped it, so it was granted under the
        // lock we now hold.
        true
    }

    /// Free permits now.
    pub(crate) fn available(&self) -> usize {
        free(self.state.load(Ordering::Acquire)) as usize
    }

    /// Callers waiting now.
    pub(crate) fn waiting(&self) -> usize {
        waiting(self.state.load(Ordering::Acquire)) as usize
    }
}

impl Waiter {
    fn grant(&self) {
        let waker = {
            let mut slot = self.slot.lock();
            slot.granted = true;
            slot.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Resolves once a release has handed this waiter a permit.
    pub(crate) fn granted(&self) -> Granted<'_> {
        Granted { waiter: self }
    }
}

/// The future of [`Waiter::granted`].
pub(crate) struct Granted<'a> {
    waiter: &'a Waiter,
}

impl Future for Granted<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut slot = self.waiter.slot.lock();
        if slot.granted {
            return Poll::Ready(());
        }
        match &mut slot.waker {
            Some(waker) => waker.clone_from(cx.waker()),
            None => slot.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_path_counts_exactly() {
        let permits = Permits::new(2);
        assert!(permits.try_acquire());
        assert!(permits.try_acquire());
        assert!(!permits.try_acquire());
        permits.release();
        assert_eq!(permits.available(), 1);
        permits.release();
        assert_eq!(permits.available(), 2);
    }

    #[test]
    fn a_release_goes_to_the_oldest_waiter() {
        let permits = Permits::new(1);
        assert!(permits.try_acquire());
        let Enqueued::Waiting(first) = permits.enqueue(2) else {
            panic!("expected to wait")
        };
        let Enqueued::Waiting(second) = permits.enqueue(2) else {
            panic!("expected to wait")
        };
        assert!(matches!(permits.enqueue(2), Enqueued::Full));
        assert_eq!(permits.waiting(), 2);
        permits.release();
        assert!(first.slot.lock().granted);
        assert!(!second.slot.lock().granted);
        // A newcomer does not jump the remaining waiter.
        assert!(!permits.try_acquire());
        assert_eq!(permits.available(), 0);
        assert!(!permits.leave(&second));
        assert_eq!(permits.waiting(), 0);
        // `first` was handed the permit; leaving now reports it as owned.
        assert!(permits.leave(&first));
        permits.release();
        assert_eq!(permits.available(), 1);
    }

    #[test]
    fn enqueue_takes_a_permit_freed_meanwhile() {
        let permits = Permits::new(1);
        assert!(matches!(permits.enqueue(0), Enqueued::Granted));
        assert!(matches!(permits.enqueue(0), Enqueued::Full));
        permits.release();
        assert_eq!(permits.available(), 1);
    }

    #[test]
    fn many_threads_never_exceed_the_bound() {
        use std::sync::atomic::AtomicUsize;
        let permits = Arc::new(Permits::new(3));
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (permits, running, peak) = (permits.clone(), running.clone(), peak.clone());
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        if permits.try_acquire() {
                            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                            peak.fetch_max(now, Ordering::SeqCst);
                            running.fetch_sub(1, Ordering::SeqCst);
                            permits.release();
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(peak.load(Ordering::SeqCst) <= 3);
        assert_eq!(permits.available(), 3);
    }
}
