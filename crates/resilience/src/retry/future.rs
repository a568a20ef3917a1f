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
        // Timers are boxed: they are only there when configured, and an
        // inline `Sleep` would triple the size of every call's future.
        Calling {
            #[pin]
            call: F,
            timer: Option<Pin<Box<Sleep>>>,
        },
        // Waiting out the backoff.
        Backoff {
            sleep: Pin<Box<Sleep>>,
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
        delays: Option<Box<Delays>>,
        #[pin]
        state: State<S::Future>,
    }
}

impl<S, C, P, Req> ResponseFuture<S, C, P, Req>
where
    S: Service<Req>,
{
    #[inline]
    pub(super) fn new(
        shared: Arc<Shared<C, P>>,
        service: S,
        next: Option<Req>,
        deadline: Option<Instant>,
        call: S::Future,
        timer: Option<Pin<Box<Sleep>>>,
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

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { call, timer } => {
                    let result = match call.poll(cx) {
                        Poll::Ready(result) => result.map_err(Into::into),
                        Poll::Pending => match timer {
                            Some(timer) => {
                                ready!(timer.as_mut().poll(cx));
                                Err(BoxError::from(Elapsed))
                            }
                            None => return Poll::Pending,
                        },
                    };
                    let mut outcome = this.shared.classify.classify(&result);
                    if !outcome.retryable {
                        return Poll::Ready(result);
                    }
                    if let Err(error) = &result {
                        outcome = this.shared.reconsider(error, outcome);
                        if !outcome.retryable {
                            return Poll::Ready(result);
                        }
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
                            sleep: Box::pin(tokio::time::sleep(delay)),
                        }),
                    }
                }
                StateProj::Backoff { sleep } => {
                    ready!(sleep.as_mut().poll(cx));
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
