//! Circuit breaker: stop calling an upstream that is failing, give it time
//! to recover, then probe it before letting traffic back.
//!
//! A closed breaker records the outcome of every call in a sliding window
//! (the last `n` calls, or the calls of the last `d`). Once the window
//! holds the minimum number of calls and the failure rate, or the rate of
//! calls slower than a threshold, reaches its limit, the breaker opens:
//! calls fail fast with [`BreakerOpen`], which says how long it stays open.
//! When that time is up the breaker is half-open and admits a bounded
//! number of probes; their outcomes close it again or re-open it, for
//! longer each time if an [`OpenBackoff`] is set. An operator may force it
//! open or disable it, and [`reset`](CircuitBreaker::reset) it.
//!
//! What counts as a failure is a [`Classify`]'s call: for HTTP, connect
//! errors, timeouts and 5xx fail while 4xx do not
//! ([`HttpClassifier`](crate::classify::HttpClassifier)), so the one breaker
//! serves HTTP, gRPC and plain futures.
//!
//! Use it directly ([`CircuitBreaker::try_acquire`], [`CircuitBreaker::call`])
//! or as a tower layer ([`CircuitBreakerLayer`]). Clones share one breaker.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use trellis_resilience::breaker::{CircuitBreaker, CircuitBreakerConfig, CircuitState};
//! use trellis_resilience::classify::ErrorsFail;
//!
//! let breaker = CircuitBreaker::new(
//!     CircuitBreakerConfig::default().minimum_calls(2).failure_rate_threshold(50.0),
//! )
//! .unwrap();
//! for _ in 0..2 {
//!     let _ = breaker.call(&ErrorsFail, async { Err::<(), _>("refused") }).await;
//! }
//! assert_eq!(breaker.state(), CircuitState::Open);
//! let rejected = breaker.call(&ErrorsFail, async { Ok::<_, &str>(()) }).await;
//! assert!(rejected.unwrap_err().is_open());
//! # }
//! ```

mod config;
mod core;
mod error;
mod event;
mod permit;
mod service;
mod window;

pub use self::config::{CircuitBreakerConfig, InvalidConfig, OpenBackoff, SlidingWindow};
pub use self::error::BreakerOpen;
pub use self::event::{BreakerEvent, CircuitSnapshot, CircuitState};
pub use self::permit::{OwnedPermit, Permit};
pub use self::service::{CircuitBreakerLayer, CircuitBreakerService, ResponseFuture};

use self::core::Shared;
use crate::classify::Classify;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::broadcast;

/// A circuit breaker; clones share its state, so one breaker guards an
/// upstream for every caller.
#[derive(Clone)]
pub struct CircuitBreaker {
    shared: Arc<Shared>,
}

impl CircuitBreaker {
    /// A closed breaker, or the reason `config` cannot work.
    pub fn new(config: CircuitBreakerConfig) -> Result<Self, InvalidConfig> {
        let settings = config.validate()?;
        Ok(CircuitBreaker {
            shared: Arc::new(Shared::new(Arc::from(config.name), settings)),
        })
    }

    /// Leave for one call, or the rejection to fail fast with. Give the
    /// permit the call's outcome; dropping it records nothing.
    #[inline]
    pub fn try_acquire(&self) -> Result<Permit<'_>, BreakerOpen> {
        self.shared
            .acquire()
            .map(|ticket| Permit::new(&self.shared, ticket))
    }

    /// As [`try_acquire`](Self::try_acquire), with a permit that holds its
    /// own handle on the breaker.
    pub fn try_acquire_owned(&self) -> Result<OwnedPermit, BreakerOpen> {
        self.shared
            .acquire()
            .map(|ticket| OwnedPermit::new(self.clone(), ticket))
    }

    /// Runs `call` through the breaker, judging its result with `classifier`.
    /// If the returned future is dropped before `call` finishes, nothing is
    /// recorded.
    pub async fn call<T, E, C, F>(&self, classifier: &C, call: F) -> Result<T, CallError<E>>
    where
        C: Classify<T, E>,
        F: Future<Output = Result<T, E>>,
    {
        let permit = self.try_acquire().map_err(CallError::Open)?;
        let result = call.await;
        permit.record(classifier.classify(&result));
        result.map_err(CallError::Inner)
    }

    /// The state a call arriving now would meet (an open breaker whose time
    /// is up reports, and becomes, half-open).
    pub fn state(&self) -> CircuitState {
        self.shared.state()
    }

    /// The state and window now, for metrics and the control API.
    pub fn snapshot(&self) -> CircuitSnapshot {
        self.shared.snapshot()
    }

    /// Every event from now on: transitions, rejections, failures and slow
    /// calls (never an ordinary success).
    pub fn subscribe(&self) -> broadcast::Receiver<BreakerEvent> {
        self.shared.subscribe()
    }

    /// Opens the breaker until [`reset`](Self::reset); rejections say
    /// `retry_after` zero, as no timer will close it.
    pub fn force_open(&self) {
        self.shared.force(CircuitState::ForcedOpen);
    }

    /// Switches the breaker off until [`reset`](Self::reset): every call
    /// passes and nothing is recorded.
    #[doc(alias = "force_closed")]
    pub fn disable(&self) {
        self.shared.force(CircuitState::Disabled);
    }

    /// Back to closed, from any state, with an empty window and the open
    /// duration back at its start. Calls in flight are not counted.
    pub fn reset(&self) {
        self.shared.force(CircuitState::Closed);
    }

    /// The configured name.
    pub fn name(&self) -> &str {
        self.shared.name()
    }
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", self.shared.name())
            .field("state", &self.state())
            .finish()
    }
}

/// The error of [`CircuitBreaker::call`]: the breaker refused the call, or
/// the call itself failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError<E> {
    /// The breaker refused the call; the call was never made.
    #[error("call refused")]
    Open(#[source] BreakerOpen),
    /// The call was made and returned this error.
    #[error("{0}")]
    Inner(E),
}

impl<E> CallError<E> {
    /// Whether the breaker refused the call.
    pub fn is_open(&self) -> bool {
        matches!(self, CallError::Open(_))
    }

    /// The call's own error, if it was made.
    pub fn into_inner(self) -> Option<E> {
        match self {
            CallError::Inner(e) => Some(e),
            CallError::Open(_) => None,
        }
    }
}
