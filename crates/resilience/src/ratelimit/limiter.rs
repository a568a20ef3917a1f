//! The rate limiter: a quota, a store, and what to do when the store fails.

use super::{Decision, DirectStore, LocalStore, MemoryStore, Quota, RateLimitStore, StoreError};
use crate::observe::EventStream;
use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What a limiter decides when its store cannot (Redis down or slow).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// Admit the call: an outage of the limiter does not become an outage
    /// of the service (the usual choice for a fleet-wide limit).
    #[default]
    Open,
    /// Refuse the call: the limit protects something that must not be
    /// overrun, even at the cost of availability.
    Closed,
}

/// Something a limiter did that is not an ordinary admitted call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitEvent<K> {
    /// A call was refused.
    Rejected {
        /// Whose quota was exhausted.
        key: K,
        /// When the key may call again.
        retry_after: Duration,
    },
    /// The store could not decide, so the failure policy did.
    StoreFailed {
        /// The key being decided.
        key: K,
        /// What went wrong.
        error: StoreError,
        /// What was decided instead.
        policy: FailurePolicy,
    },
}

/// A limiter's state now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateLimiterSnapshot {
    /// Keys the store holds, when it can tell (not for Redis).
    pub keys_tracked: Option<usize>,
    /// Calls refused since the limiter was made.
    pub rejected: u64,
    /// Decisions the failure policy made because the store failed.
    pub store_failures: u64,
}

/// A rate limiter over a store, shared by every clone.
pub struct RateLimiter<K, S = MemoryStore<K>> {
    shared: Arc<Shared<K, S>>,
}

struct Shared<K, S> {
    store: S,
    quota: Quota,
    policy: FailurePolicy,
    rejected: StripedCounter,
    store_failures: AtomicU64,
    events: EventStream<RateLimitEvent<K>>,
}

impl<K, S> Clone for RateLimiter<K, S> {
    fn clone(&self) -> Self {
        RateLimiter {
            shared: self.shared.clone(),
        }
    }
}

impl<K, S: fmt::Debug> fmt::Debug for RateLimiter<K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("quota", &self.shared.quota)
            .field("policy", &self.shared.policy)
            .field("store", &self.shared.store)
            .finish_non_exhaustive()
    }
}

impl RateLimiter<(), DirectStore> {
    /// One limit for every call, with no keys.
    pub fn direct(quota: Quota) -> Self {
        RateLimiter::new(quota, DirectStore::new())
    }
}

impl<K, S> RateLimiter<K, S>
where
    K: Clone + Send + Sync + 'static,
    S: RateLimitStore<K>,
{
    /// A limiter applying `quota` to every key, failing open if the store fails.
    pub fn new(quota: Quota, store: S) -> Self {
        Self::with_policy(quota, store, FailurePolicy::Open)
    }

    /// A limiter applying `quota` to every key, deciding by `policy` when
    /// the store fails.
    pub fn with_policy(quota: Quota, mut store: S, policy: FailurePolicy) -> Self {
        store.prepare(&quota);
        RateLimiter {
            shared: Arc::new(Shared {
                store,
                quota,
                policy,
                rejected: StripedCounter::default(),
                store_failures: AtomicU64::new(0),
                events: EventStream::default(),
            }),
        }
    }

    /// Decides one call for `key` under the limiter's quota.
    pub async fn check(&self, key: &K) -> Decision {
        let quota = self.shared.quota;
        self.check_with(key, &quota).await
    }

    /// Decides one call for `key` under `quota` (a per-tenant override).
    pub async fn check_with(&self, key: &K, quota: &Quota) -> Decision {
        let outcome = self.shared.store.decide(key, quota).await;
        self.settle(key, quota, outcome)
    }

    /// Decides one call for `key` at once, for a store in this process.
    /// The cheapest path: no future, no allocation. Inlined, so a caller
    /// that reads only some of the decision pays only for those fields.
    #[inline]
    pub fn check_now(&self, key: &K) -> Decision
    where
        S: LocalStore<K>,
    {
        let shared = &*self.shared;
        let decision = shared.store.decide_now(key, &shared.quota);
        self.count(key, decision);
        decision
    }

    /// The quota every key gets by default.
    pub fn quota(&self) -> Quota {
        self.shared.quota
    }

    /// The policy applied when the store fails.
    pub fn failure_policy(&self) -> FailurePolicy {
        self.shared.policy
    }

    /// The store, for its own snapshot.
    pub fn store(&self) -> &S {
        &self.shared.store
    }

    /// Rejections and store failures, as they happen. Admitted calls
    /// publish nothing.
    pub fn events(&self) -> &EventStream<RateLimitEvent<K>> {
        &self.shared.events
    }

    /// The state now.
    pub fn snapshot(&self) -> RateLimiterSnapshot {
        RateLimiterSnapshot {
            keys_tracked: self.shared.store.keys_tracked(),
            rejected: self.shared.rejected.sum(),
            store_failures: self.shared.store_failures.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn start(&self, key: &K) -> S::Decide {
        self.shared.store.decide(key, &self.shared.quota)
    }

    /// Turns a store's answer into a decision: counts it, applies the
    /// failure policy, and reports anything out of the ordinary.
    pub(crate) fn settle(
        &self,
        key: &K,
        quota: &Quota,
        outcome: Result<Decision, StoreError>,
    ) -> Decision {
        let shared = &*self.shared;
        let decision = match outcome {
            Ok(decision) => decision,
            Err(error) => {
                shared.store_failures.fetch_add(1, Ordering::Relaxed);
                let policy = shared.policy;
                // Debug, not warn: during an outage this fires on every call; the
                // event stream and `store_failures` are how it is noticed.
                tracing::debug!(%error, ?policy, "rate-limit store failed; applying the failure policy");
                shared.events.emit(RateLimitEvent::StoreFailed {
                    key: key.clone(),
                    error,
                    policy,
                });
                match policy {
                    FailurePolicy::Open => quota.allowed_blind(),
                    FailurePolicy::Closed => quota.refused_blind(),
                }
            }
        };
        self.count(key, decision);
        decision
    }

    #[inline]
    fn count(&self, key: &K, decision: Decision) {
        // Admitted calls are not counted: the service that serves them
        // counts its requests, and a shared counter here would be a second
        // contended write on the admitted path, which is otherwise one CAS.
        if !decision.allowed {
            self.count_rejected(key, decision.retry_after);
        }
    }

    #[cold]
    #[inline(never)]
    fn count_rejected(&self, key: &K, retry_after: Duration) {
        let shared = &*self.shared;
        shared.rejected.add();
        shared.events.emit(RateLimitEvent::Rejected {
            key: key.clone(),
            retry_after,
        });
    }
}

const STRIPES: usize = 8;

/// A counter spread over cache lines so that threads counting at once do
/// not fight over one line; reading sums the stripes.
#[derive(Default)]
struct StripedCounter {
    stripes: [PaddedCounter; STRIPES],
}

#[derive(Default)]
#[repr(align(128))]
struct PaddedCounter(AtomicU64);

impl StripedCounter {
    fn add(&self) {
        self.stripes[stripe()].0.fetch_add(1, Ordering::Relaxed);
    }

    fn sum(&self) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum()
    }
}

/// This thread's stripe, assigned round-robin on first use.
fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    STRIPE.with(|s| {
        let mut index = s.get();
        if index == usize::MAX {
            index = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
            s.set(index);
        }
        index
    })
}
