//! The future of one retried call: attempt, classify, back off, repeat.
//!
//! A hand-written state machine rather than a boxed `async` block, so a call
//! that succeeds at once costs no allocation. Dropping it at any point
//! (mid-attempt, mid-backoff) drops the attempt and the timer with it; the
//! only shared state it touches — the budget and the counters — is updated
//! at decision points, so nothing is left half-done.

use super::{Delays, RetryPolicy, Shared};
use crate::classify::Classify;
use crate::timeout::Elapsed;
use crate::BoxError;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::time::{Instant, Sleep};
use tower::Service;

/// The retry lost the copy of its request: a bug in this crate, reported
/// rather than panicking.
#[derive(Debug, thiserror::Error)]
#[error("retry has no copy of the request to send again")]
struct NoRequestCopy;

pin_project! {
    #[project = StateProj]
    enum State<F> {
        // An attempt in flight, bounded by the per-try/overall timer.
        Calling {
            #[pin]
            call: F,
            #[pin]
            timer: Option<Sleep>,
        },
        // Waiting out the backoff.
        Backoff {
            #[pin]
            sleep: Sleep,
        },
        // Waiting for the service to be ready for the next attempt.
        Readying,
    }
}

pin_project! {
    /// The response of a [`Retry`](super::Retry).
    pub struct ResponseFuture<S, C, P, Req>
    where
        S: Service<Req>,
    {
        shared: Arc<Shared<C, P>>,
        service: S,
        next: Option<Req>,
        attempt: u32,
        deadline: Option<Instant>,
        delays: Option<Delays>,
        #[pin]
        state: State<S::Future>,
    }
}

impl<S, C, P, Req> ResponseFuture<S, C, P, Req>
where
    S: Service<Req>,
{
    pub(super) fn new(
        shared: Arc<Shared<C, P>>,
        service: S,
        next: Option<Req>,
        deadline: Option<Instant>,
        call: S::Future,
        timer: Option<Sleep>,
    ) -> Self {
        ResponseFuture {
            shared,
            service,
            next,
            attempt: 1,
            deadline,
            delays: None,
            state: State::Calling { call, timer },
        }
    }
}

impl<S, C, P, Req> Future for ResponseFuture<S, C, P, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, BoxError>,
    P: RetryPolicy<Req>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { call, timer } => {
                    let result = match call.poll(cx) {
                        Poll::Ready(result) => result.map_err(Into::into),
                        Poll::Pending => match timer.as_pin_mut() {
                            Some(timer) => {
                                ready!(timer.poll(cx));
                                Err(BoxError::from(Elapsed))
                            }
                            None => return Poll::Pending,
                        },
                    };
                    let outcome = this.shared.classify.classify(&result);
                    if !outcome.retryable {
                        return Poll::Ready(result);
                    }
                    let delay = this.shared.next_delay(
                        outcome,
                        *this.attempt,
                        this.next.is_some(),
                        *this.deadline,
                        this.delays,
                    );
                    match delay {
                        None => return Poll::Ready(result),
                        Some(delay) if delay.is_zero() => this.state.set(State::Readying),
                        Some(delay) => this.state.set(State::Backoff {
                            sleep: tokio::time::sleep(delay),
                        }),
                    }
                }
                StateProj::Backoff { sleep } => {
                    ready!(sleep.poll(cx));
                    this.state.set(State::Readying);
                }
                StateProj::Readying => {
                    if let Err(error) = ready!(this.service.poll_ready(cx)) {
                        return Poll::Ready(Err(error.into()));
                    }
                    let Some(mut request) = this.next.take() else {
                        return Poll::Ready(Err(NoRequestCopy.into()));
                    };
                    *this.attempt += 1;
                    if *this.attempt < this.shared.config.max_attempts {
                        *this.next = this.shared.policy.replay(&request);
                    }
                    let timer = this.shared.attempt_timer(&mut request, *this.deadline);
                    let call = this.service.call(request);
                    this.state.set(State::Calling { call, timer });
                }
            }
        }
    }
}
