//! Retry with backoff.
//!
//! A [`Retry`] sends a request again when the [`Classify`] says the failure
//! is retryable, waiting a [`Backoff`] delay (or the server's `Retry-After`)
//! in between, until it succeeds or one of its limits says stop:
//!
//! * `max_attempts` per call;
//! * a shared [`RetryBudget`] across calls, so a failing upstream sees at
//!   most a fraction more traffic, never a multiple of it;
//! * an overall deadline across attempts — its own, or one inherited from an
//!   outer [`Timeout`](crate::timeout::Timeout) — which no backoff or
//!   per-try timeout outlives;
//! * the [`RetryPolicy`]: a request that cannot be copied (a non-idempotent
//!   HTTP request, a body too large to buffer) is sent exactly once.
//!
//! A refusal by one of this crate's layers below the retry (found with
//! [`Rejection::of`](crate::Rejection::of)) is not a failure of the
//! upstream, and by default is not retried blindly: an open breaker
//! ([`BreakerOpen`](crate::breaker::BreakerOpen)) or a full bulkhead
//! ([`BulkheadFull`](crate::bulkhead::BulkheadFull)) is returned at once —
//! hammering them is what they exist to stop — while a rate limit
//! ([`RateLimited`](crate::ratelimit::RateLimited)) is retried after its
//! `retry_after`, exactly like a server's `Retry-After` (so only when
//! `honour_retry_after` is on, within `max_retry_after` and the deadline). A
//! timeout below the retry stays retryable. [`RetryLayer::retry_rejections`]
//! turns this off and leaves the [`Classify`] the only judge.
//!
//! An ordinary success costs a clone of the service and of the request (as
//! in `tower::retry`), a budget deposit when there is one, and no event.
//! For HTTP, [`http::HttpRetryLayer`] adds idempotency rules and bounded
//! body replay.
//!
//! ```
//! use std::time::Duration;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use trellis_resilience::fallback::on_rejection;
//! use trellis_resilience::retry::{Backoff, Jitter, RetryBudget, RetryConfig, RetryLayer};
//! use trellis_resilience::timeout::TimeoutLayer;
//! use trellis_resilience::{BoxError, Rejection};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let retry = RetryLayer::new(RetryConfig {
//!     max_attempts: 3,
//!     backoff: Backoff::exponential(Duration::from_millis(25), Duration::from_secs(1))
//!         .with_jitter(Jitter::Decorrelated),
//!     budget: Some(RetryBudget::new(Duration::from_secs(10), 10, 0.2)?),
//!     per_try_timeout: Some(Duration::from_millis(250)),
//!     ..RetryConfig::default()
//! });
//! let svc = ServiceBuilder::new()
//!     // Whatever is left after the retries: a degraded answer, not an error.
//!     .layer(on_rejection(|r: Rejection| (r == Rejection::Timeout).then(|| "stale".to_owned())))
//!     .layer(TimeoutLayer::new(Duration::from_secs(1)))
//!     .layer(retry.clone())
//!     .service(service_fn(|name: &'static str| async move { Ok::<_, BoxError>(format!("hello {name}")) }));
//! assert_eq!(svc.oneshot("world").await?, "hello world");
//! assert_eq!(retry.snapshot().retries, 0);
//! # Ok(())
//! # }
//! ```

mod backoff;
#[cfg(feature = "http")]
mod body;
mod budget;
mod future;
#[cfg(feature = "http")]
pub mod http;
mod policy;

pub use backoff::{Backoff, Delays, Jitter};
pub use budget::{BudgetSnapshot, InvalidBudget, RetryBudget};
pub use future::ResponseFuture;
pub use policy::{CloneRequest, ReplayWith, RetryPolicy};

use crate::classify::{Classify, ErrorsFail, Outcome};
use crate::observe::EventStream;
use crate::timeout::Deadline;
use crate::{BoxError, Rejection};
use parking_lot::Mutex;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

/// How a [`Retry`] behaves.
#[derive(Debug, Clone)]
pub struct RetryConfig {
    /// Attempts per call, the first included; 0 and 1 both mean "never retry".
    pub max_attempts: u32,
    /// Delay before each retry.
    pub backoff: Backoff,
    /// A budget shared across calls (and across layers, if cloned into them).
    pub budget: Option<RetryBudget>,
    /// A limit on each attempt; a timed-out attempt fails with
    /// [`Elapsed`](crate::timeout::Elapsed) and may be retried.
    pub per_try_timeout: Option<Duration>,
    /// A limit on the whole call, attempts and backoff included.
    pub deadline: Option<Duration>,
    /// Wait as long as the server's `Retry-After` says instead of the backoff.
    pub honour_retry_after: bool,
    /// Give up rather than wait when `Retry-After` asks for longer than this.
    pub max_retry_after: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 3,
            backoff: Backoff::default(),
            budget: None,
            per_try_timeout: None,
            deadline: None,
            honour_retry_after: true,
            max_retry_after: Duration::from_secs(60),
        }
    }
}

/// What a retry reports. Nothing is reported for a call that succeeds at
/// once or fails in a way that is not retryable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryEvent {
    /// Attempt number `attempt` (2 for the first retry) starts after `delay`;
    /// `retry_after` when the delay is the server's.
    Retrying {
        attempt: u32,
        delay: Duration,
        retry_after: bool,
    },
    /// The budget refused a retry after `attempt` attempts.
    BudgetExhausted { attempt: u32 },
    /// A retryable failure was returned to the caller after `attempts`.
    GaveUp { attempts: u32, reason: GiveUpReason },
}

/// Why a retryable failure was not retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUpReason {
    /// `max_attempts` were made.
    MaxAttempts,
    /// The next attempt could not start before the deadline.
    Deadline,
    /// The request could not be copied (policy or body size).
    NotReplayable,
    /// The server asked to wait longer than `max_retry_after`.
    RetryAfterTooLong,
    /// The retry budget is spent.
    BudgetExhausted,
}

/// Counters of a retry (all services of one layer share them).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetrySnapshot {
    /// Retries made.
    pub retries: u64,
    /// Retries the budget refused.
    pub budget_exhausted: u64,
    /// Retryable failures returned to the caller.
    pub gave_up: u64,
    /// The budget's state, if there is one.
    pub budget: Option<BudgetSnapshot>,
}

#[derive(Debug, Default)]
struct Stats {
    retries: AtomicU64,
    budget_exhausted: AtomicU64,
    gave_up: AtomicU64,
}

/// Applies a [`Retry`] to a service.
#[derive(Debug, Clone)]
pub struct RetryLayer<C = ErrorsFail, P = CloneRequest> {
    config: RetryConfig,
    classify: C,
    policy: P,
    events: EventStream<RetryEvent>,
    stats: Arc<Stats>,
    rng: Option<Arc<Mutex<fastrand::Rng>>>,
    retry_rejections: bool,
}

impl RetryLayer {
    /// Retries errors (see [`ErrorsFail`]) of cloneable requests.
    pub fn new(config: RetryConfig) -> Self {
        RetryLayer {
            config,
            classify: ErrorsFail,
            policy: CloneRequest,
            events: EventStream::default(),
            stats: Arc::default(),
            rng: None,
            retry_rejections: false,
        }
    }
}

impl<C, P> RetryLayer<C, P> {
    /// Decides what is retryable with `classify`.
    pub fn classify<C2>(self, classify: C2) -> RetryLayer<C2, P> {
        RetryLayer {
            config: self.config,
            classify,
            policy: self.policy,
            events: self.events,
            stats: self.stats,
            rng: self.rng,
            retry_rejections: self.retry_rejections,
        }
    }

    /// Copies requests for replay with `policy`.
    pub fn policy<P2>(self, policy: P2) -> RetryLayer<C, P2> {
        RetryLayer {
            config: self.config,
            classify: self.classify,
            policy,
            events: self.events,
            stats: self.stats,
            rng: self.rng,
            retry_rejections: self.retry_rejections,
        }
    }

    /// Draws jitter from a generator seeded with `seed`: reproducible delays.
    pub fn seed(mut self, seed: u64) -> Self {
        self.rng = Some(Arc::new(Mutex::new(fastrand::Rng::with_seed(seed))));
        self
    }

    /// Whether rejections by this crate's layers below the retry (an open
    /// breaker, a full bulkhead, a rate limit) are retried like any failure
    /// the [`Classify`] calls retryable. Off by default: see the
    /// [module docs](self).
    pub fn retry_rejections(mut self, retry: bool) -> Self {
        self.retry_rejections = retry;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &RetryConfig {
        &self.config
    }

    /// Events of every service this layer builds.
    pub fn events(&self) -> &EventStream<RetryEvent> {
        &self.events
    }

    /// Counters of every service this layer builds.
    pub fn snapshot(&self) -> RetrySnapshot {
        snapshot(&self.stats, &self.config)
    }
}

fn snapshot(stats: &Stats, config: &RetryConfig) -> RetrySnapshot {
    RetrySnapshot {
        retries: stats.retries.load(Ordering::Relaxed),
        budget_exhausted: stats.budget_exhausted.load(Ordering::Relaxed),
        gave_up: stats.gave_up.load(Ordering::Relaxed),
        budget: config.budget.as_ref().map(RetryBudget::snapshot),
    }
}

impl<S, C: Clone, P: Clone> Layer<S> for RetryLayer<C, P> {
    type Service = Retry<S, C, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry {
            inner,
            shared: Arc::new(Shared {
                config: self.config.clone(),
                classify: self.classify.clone(),
                policy: self.policy.clone(),
                events: self.events.clone(),
                stats: Arc::clone(&self.stats),
                rng: self.rng.clone(),
                retry_rejections: self.retry_rejections,
            }),
        }
    }
}

/// What every clone of a [`Retry`] and every call in flight shares.
#[derive(Debug)]
pub(crate) struct Shared<C, P> {
    pub(crate) config: RetryConfig,
    pub(crate) classify: C,
    pub(crate) policy: P,
    events: EventStream<RetryEvent>,
    stats: Arc<Stats>,
    rng: Option<Arc<Mutex<fastrand::Rng>>>,
    retry_rejections: bool,
}

/// Retries failed calls. See the [module docs](self) and [`RetryLayer`].
#[derive(Debug)]
pub struct Retry<S, C = ErrorsFail, P = CloneRequest> {
    inner: S,
    pub(crate) shared: Arc<Shared<C, P>>,
}

impl<S: Clone, C, P> Clone for Retry<S, C, P> {
    fn clone(&self) -> Self {
        Retry {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S> Retry<S> {
    /// Retries errors of `inner` with `config`.
    pub fn new(inner: S, config: RetryConfig) -> Self {
        RetryLayer::new(config).layer(inner)
    }
}

impl<S, C, P> Retry<S, C, P> {
    /// Counters of this retry (shared with its layer's other services).
    pub fn snapshot(&self) -> RetrySnapshot {
        snapshot(&self.shared.stats, &self.shared.config)
    }

    /// This retry's events.
    pub fn events(&self) -> &EventStream<RetryEvent> {
        &self.shared.events
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, C, P, Req> Service<Req> for Retry<S, C, P>
where
    S: Service<Req> + Clone,
    S::Error: Into<crate::BoxError>,
    C: Classify<S::Response, crate::BoxError>,
    P: RetryPolicy<Req>,
{
    type Response = S::Response;
    type Error = crate::BoxError;
    type Future = ResponseFuture<S, C, P, Req>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, mut request: Req) -> Self::Future {
        // The service that was polled ready makes the first call and stays
        // with the future for the retries; this one gets a fresh clone.
        let clone = self.inner.clone();
        let mut service = std::mem::replace(&mut self.inner, clone);
        let shared = &self.shared;
        if let Some(budget) = &shared.config.budget {
            budget.deposit();
        }
        let deadline = shared.overall_deadline(&request);
        let next = if shared.config.max_attempts > 1 {
            shared.policy.replay(&request)
        } else {
            None
        };
        let timer = shared.attempt_timer(&mut request, deadline);
        let call = service.call(request);
        ResponseFuture::new(Arc::clone(shared), service, next, deadline, call, timer)
    }
}

impl<C, P> Shared<C, P> {
    /// The earlier of this retry's own deadline and the one the request carries.
    #[inline]
    fn overall_deadline<Req>(&self, request: &Req) -> Option<Instant>
    where
        P: RetryPolicy<Req>,
    {
        let own = self.config.deadline.map(|d| Instant::now() + d);
        let inherited = self
            .policy
            .inherited_deadline(request)
            .map(Deadline::instant);
        match (own, inherited) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The timer of one attempt: the per-try timeout, never past the
    /// overall deadline. Inner layers learn it through the request.
    #[inline]
    pub(crate) fn attempt_timer<Req>(
        &self,
        request: &mut Req,
        deadline: Option<Instant>,
    ) -> Option<Pin<Box<Sleep>>>
    where
        P: RetryPolicy<Req>,
    {
        let per_try = self.config.per_try_timeout.map(|t| Instant::now() + t);
        let until = match (per_try, deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }?;
        self.policy.set_deadline(request, Deadline::at(until));
        Some(Box::pin(tokio::time::sleep_until(until)))
    }

    /// What a retryable failure means once the rejections of this crate's
    /// own layers are taken into account (see the module docs).
    #[cold]
    pub(crate) fn reconsider(&self, error: &BoxError, outcome: Outcome) -> Outcome {
        if self.retry_rejections {
            return outcome;
        }
        match Rejection::of(error) {
            Some(Rejection::BreakerOpen { .. } | Rejection::BulkheadFull) => Outcome {
                retryable: false,
                ..outcome
            },
            Some(Rejection::RateLimited { retry_after }) => {
                outcome.with_retry_after(Some(retry_after))
            }
            Some(Rejection::Timeout) | None => outcome,
        }
    }

    /// After a retryable failure of attempt number `attempt`: the delay
    /// before the next attempt, or `None` to return the failure.
    pub(crate) fn next_delay(
        &self,
        outcome: Outcome,
        attempt: u32,
        replayable: bool,
        deadline: Option<Instant>,
        delays: &mut Option<Box<Delays>>,
    ) -> Option<Duration> {
        let give_up = |reason| {
            self.stats.gave_up.fetch_add(1, Ordering::Relaxed);
            self.events.emit(RetryEvent::GaveUp {
                attempts: attempt,
                reason,
            });
            None
        };
        if attempt >= self.config.max_attempts {
            return give_up(GiveUpReason::MaxAttempts);
        }
        if !replayable {
            return give_up(GiveUpReason::NotReplayable);
        }
        let server_delay = outcome
            .retry_after
            .filter(|_| self.config.honour_retry_after);
        let delay = match server_delay {
            Some(after) if after > self.config.max_retry_after => {
                return give_up(GiveUpReason::RetryAfterTooLong)
            }
            Some(after) => after,
            None => delays
                .get_or_insert_with(|| Box::new(self.delays()))
                .next_delay(),
        };
        if deadline.is_some_and(|deadline| Instant::now() + delay >= deadline) {
            return give_up(GiveUpReason::Deadline);
        }
        if let Some(budget) = &self.config.budget {
            if !budget.withdraw() {
                self.stats.budget_exhausted.fetch_add(1, Ordering::Relaxed);
                self.events.emit(RetryEvent::BudgetExhausted { attempt });
                return give_up(GiveUpReason::BudgetExhausted);
            }
        }
        self.stats.retries.fetch_add(1, Ordering::Relaxed);
        self.events.emit(RetryEvent::Retrying {
            attempt: attempt + 1,
            delay,
            retry_after: server_delay.is_some(),
        });
        Some(delay)
    }

    fn delays(&self) -> Delays {
        match &self.rng {
            Some(rng) => self.config.backoff.delays_with(rng.lock().fork()),
            None => self.config.backoff.delays(),
        }
    }
}
