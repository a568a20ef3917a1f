//! Fallback: turning a rejection or a failure into a response.
//!
//! When a breaker is open, a bulkhead is full or a deadline passed, the
//! caller often has something better than an error to give: a cached value,
//! a default, a degraded page, a `503` with a friendly body. A [`Fallback`]
//! asks a function for that response whenever the call fails; the function
//! sees the error (and [`Rejection::of`] tells it which pattern refused) and
//! may decline, in which case the error passes through unchanged.

use crate::observe::EventStream;
use crate::{BoxError, Rejection};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// What a fallback reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallbackEvent {
    /// A failed call was answered by the fallback; `rejection` says which
    /// pattern refused it, `None` for a failure of the service itself.
    Used { rejection: Option<Rejection> },
}

/// Applies a [`Fallback`] to a service.
pub struct FallbackLayer<F> {
    shared: Arc<Shared<F>>,
}

/// The function and the event stream, shared by every clone and every call.
struct Shared<F> {
    fallback: F,
    events: EventStream<FallbackEvent>,
}

impl<F> Clone for FallbackLayer<F> {
    fn clone(&self) -> Self {
        FallbackLayer {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<F> std::fmt::Debug for FallbackLayer<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FallbackLayer").finish_non_exhaustive()
    }
}

impl<F> FallbackLayer<F> {
    /// Answers a failed call with `fallback(&error)` when that is `Some`;
    /// `fallback` is any `Fn(&BoxError) -> Option<Response>`.
    pub fn new(fallback: F) -> Self {
        FallbackLayer {
            shared: Arc::new(Shared {
                fallback,
                events: EventStream::default(),
            }),
        }
    }

    /// Events of every service this layer builds.
    pub fn events(&self) -> &EventStream<FallbackEvent> {
        &self.shared.events
    }
}

/// A fallback keyed on which pattern refused the call: `fallback(rejection)`
/// answers rejections (breaker open, bulkhead full, rate limited, timeout);
/// failures of the service itself pass through.
pub fn on_rejection<Res, G>(fallback: G) -> FallbackLayer<impl Fn(&BoxError) -> Option<Res>>
where
    G: Fn(Rejection) -> Option<Res>,
{
    FallbackLayer::new(move |error: &BoxError| Rejection::of(error).and_then(&fallback))
}

impl<S, F> Layer<S> for FallbackLayer<F> {
    type Service = Fallback<S, F>;

    fn layer(&self, inner: S) -> Self::Service {
        Fallback {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// Answers a failed call with a fallback response. See [`FallbackLayer`].
pub struct Fallback<S, F> {
    inner: S,
    shared: Arc<Shared<F>>,
}

impl<S: Clone, F> Clone for Fallback<S, F> {
    fn clone(&self) -> Self {
        Fallback {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: std::fmt::Debug, F> std::fmt::Debug for Fallback<S, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fallback")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, F> Fallback<S, F> {
    /// This fallback's events.
    pub fn events(&self) -> &EventStream<FallbackEvent> {
        &self.shared.events
    }
}

impl<S, F, Req> Service<Req> for Fallback<S, F>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    F: Fn(&BoxError) -> Option<S::Response>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, F>;

    /// A service that is not ready fails the caller as it is; the fallback
    /// answers calls, and a call that was never made has no one to answer.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        ResponseFuture {
            inner: self.inner.call(request),
            shared: Arc::clone(&self.shared),
        }
    }
}

pin_project! {
    /// The response of a [`Fallback`].
    pub struct ResponseFuture<Fut, F> {
        #[pin]
        inner: Fut,
        shared: Arc<Shared<F>>,
    }
}

impl<Fut, F, T, E> Future for ResponseFuture<Fut, F>
where
    Fut: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    F: Fn(&BoxError) -> Option<T>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let error = match std::task::ready!(this.inner.poll(cx)) {
            Ok(response) => return Poll::Ready(Ok(response)),
            Err(error) => error.into(),
        };
        match (this.shared.fallback)(&error) {
            Some(response) => {
                this.shared.events.emit(FallbackEvent::Used {
                    rejection: Rejection::of(&error),
                });
                Poll::Ready(Ok(response))
            }
            None => Poll::Ready(Err(error)),
        }
    }
}
