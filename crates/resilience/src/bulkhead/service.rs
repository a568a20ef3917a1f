//! The bulkhead as a tower layer.
//!
//! The permit is taken in `poll_ready`, where tower expects a service to
//! say whether it has capacity: a caller that waits does so before handing
//! over its request. A refusal is not a `poll_ready` error (which many
//! callers treat as a dead service); as in tower's `LoadShed`, `poll_ready`
//! reports ready and the next `call` fails at once with [`BulkheadFull`].

use super::{Bulkhead, BulkheadFull, BulkheadPermit};
use crate::BoxError;
use pin_project_lite::pin_project;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tower::{Layer, Service};

/// Applies a shared [`Bulkhead`] to a service.
#[derive(Debug, Clone)]
pub struct BulkheadLayer {
    bulkhead: Bulkhead,
}

impl BulkheadLayer {
    /// Every service this layer wraps shares `bulkhead`.
    pub fn new(bulkhead: Bulkhead) -> Self {
        BulkheadLayer { bulkhead }
    }
}

impl<S> Layer<S> for BulkheadLayer {
    type Service = BulkheadService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BulkheadService::new(inner, self.bulkhead.clone())
    }
}

// Sync too, so the service can be shared the way axum and hyper-util expect.
type Waiting = Pin<Box<dyn Future<Output = Result<BulkheadPermit, BulkheadFull>> + Send + Sync>>;

/// A service whose calls run under a [`Bulkhead`].
pub struct BulkheadService<S> {
    inner: S,
    bulkhead: Bulkhead,
    // Three plain fields rather than one state enum: the admitted path then
    // only tests `permit`, and nothing it touches needs a drop glue call.
    permit: Option<BulkheadPermit>,
    waiting: Option<Waiting>,
    refused: bool,
}

impl<S> BulkheadService<S> {
    /// Wraps `inner` in `bulkhead`.
    pub fn new(inner: S, bulkhead: Bulkhead) -> Self {
        BulkheadService {
            inner,
            bulkhead,
            permit: None,
            waiting: None,
            refused: false,
        }
    }

    /// The bulkhead, for its snapshot and events.
    pub fn bulkhead(&self) -> &Bulkhead {
        &self.bulkhead
    }

    /// Takes a permit, or learns it is refused; `Pending` while queued.
    fn poll_permit(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.permit.is_some() || self.refused {
            return Poll::Ready(());
        }
        let waiting = match &mut self.waiting {
            Some(waiting) => waiting,
            None => match self.bulkhead.try_permit() {
                Some(permit) => {
                    self.permit = Some(permit);
                    return Poll::Ready(());
                }
                None => self
                    .waiting
                    .insert(Box::pin(self.bulkhead.clone().acquire_owned())),
            },
        };
        let outcome = ready!(waiting.as_mut().poll(cx));
        self.waiting = None;
        match outcome {
            Ok(permit) => self.permit = Some(permit),
            Err(BulkheadFull) => self.refused = true,
        }
        Poll::Ready(())
    }
}

impl<S: Clone> Clone for BulkheadService<S> {
    /// A clone shares the bulkhead but not a permit this one holds.
    fn clone(&self) -> Self {
        BulkheadService::new(self.inner.clone(), self.bulkhead.clone())
    }
}

impl<S: fmt::Debug> fmt::Debug for BulkheadService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = if self.permit.is_some() {
            "ready"
        } else if self.refused {
            "refused"
        } else if self.waiting.is_some() {
            "waiting"
        } else {
            "idle"
        };
        f.debug_struct("BulkheadService")
            .field("inner", &self.inner)
            .field("bulkhead", &self.bulkhead)
            .field("state", &state)
            .finish()
    }
}

impl<S, Req> Service<Req> for BulkheadService<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        ready!(self.poll_permit(cx));
        if self.refused {
            return Poll::Ready(Ok(()));
        }
        // Hold the permit while the inner service gets ready: the
        // bulkhead bounds calls in flight, waiting included.
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        if let Some(permit) = self.permit.take() {
            return ResponseFuture {
                inner: Some(self.inner.call(req)),
                permit: Some(permit),
            };
        }
        // Calling without readiness breaks tower's contract; it is a bug
        // in the caller, not something a request can cause.
        assert!(
            std::mem::take(&mut self.refused),
            "BulkheadService::call without poll_ready returning Ready"
        );
        ResponseFuture {
            inner: None,
            permit: None,
        }
    }
}

pin_project! {
    /// The response of a [`BulkheadService`]; it holds the call's permit
    /// until the inner future completes or is dropped.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Option<F>,
        permit: Option<BulkheadPermit>,
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.inner.as_pin_mut() {
            None => Poll::Ready(Err(BulkheadFull.into())),
            Some(inner) => {
                let output = ready!(inner.poll(cx));
                // Free the permit now rather than when the caller drops us.
                this.permit.take();
                Poll::Ready(output.map_err(Into::into))
            }
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("refused", &self.inner.is_none())
            .field("holds_permit", &self.permit.is_some())
            .finish()
    }
}
