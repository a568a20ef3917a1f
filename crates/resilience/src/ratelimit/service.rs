//! The rate limiter as a tower layer.
//!
//! The key comes from the request, so the decision is made in `call`. A
//! local store answers at once and the inner service is called right away;
//! a remote store (Redis) answers later, so the call takes the ready inner
//! service with it (leaving a fresh clone behind) and calls it once
//! admitted. A refused call fails with [`RateLimited`] and never reaches
//! the inner service.

use super::{RateLimitStore, RateLimited, RateLimiter};
use crate::BoxError;
use pin_project_lite::pin_project;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use tower::{Layer, Service};

/// Applies a [`RateLimiter`] to a service, the key taken from each request.
pub struct RateLimitLayer<K, S, F> {
    limiter: RateLimiter<K, S>,
    key_fn: Arc<F>,
}

impl<K, S, F> RateLimitLayer<K, S, F> {
    /// `key_fn` names the request's key (client IP, API key, tenant); a
    /// request it returns `None` for is not limited.
    pub fn new(limiter: RateLimiter<K, S>, key_fn: F) -> Self {
        RateLimitLayer {
            limiter,
            key_fn: Arc::new(key_fn),
        }
    }
}

impl<K, S, F> Clone for RateLimitLayer<K, S, F> {
    fn clone(&self) -> Self {
        RateLimitLayer {
            limiter: self.limiter.clone(),
            key_fn: self.key_fn.clone(),
        }
    }
}

impl<K, S, F> fmt::Debug for RateLimitLayer<K, S, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer").finish_non_exhaustive()
    }
}

impl<K, S, F, Svc> Layer<Svc> for RateLimitLayer<K, S, F> {
    type Service = RateLimitService<K, S, F, Svc>;

    fn layer(&self, inner: Svc) -> Self::Service {
        RateLimitService {
            inner,
            limiter: self.limiter.clone(),
            key_fn: self.key_fn.clone(),
        }
    }
}

/// A service whose calls are admitted by a [`RateLimiter`].
pub struct RateLimitService<K, S, F, Svc> {
    inner: Svc,
    limiter: RateLimiter<K, S>,
    key_fn: Arc<F>,
}

impl<K, S, F, Svc: Clone> Clone for RateLimitService<K, S, F, Svc> {
    fn clone(&self) -> Self {
        RateLimitService {
            inner: self.inner.clone(),
            limiter: self.limiter.clone(),
            key_fn: self.key_fn.clone(),
        }
    }
}

impl<K, S, F, Svc: fmt::Debug> fmt::Debug for RateLimitService<K, S, F, Svc> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<K, S, F, Svc, Req> Service<Req> for RateLimitService<K, S, F, Svc>
where
    K: Clone + Send + Sync + 'static,
    S: RateLimitStore<K>,
    F: Fn(&Req) -> Option<K>,
    Svc: Service<Req> + Clone + Send + 'static,
    Svc::Error: Into<BoxError>,
    Svc::Future: Send,
    Req: Send + 'static,
{
    type Response = Svc::Response;
    type Error = BoxError;
    type Future = RateLimitFuture<Svc::Future, Svc::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let Some(key) = (self.key_fn)(&req) else {
            return RateLimitFuture::called(self.inner.call(req));
        };
        let mut decide = self.limiter.start(&key);
        // A local store's future is already complete; polling it here with
        // a no-op waker spares the allocation of the deferred path.
        let mut cx = Context::from_waker(Waker::noop());
        if let Poll::Ready(outcome) = Pin::new(&mut decide).poll(&mut cx) {
            let quota = self.limiter.quota();
            let decision = self.limiter.settle(&key, &quota, outcome);
            if !decision.allowed {
                return RateLimitFuture::limited(RateLimited::new(decision.retry_after));
            }
            return RateLimitFuture::called(self.inner.call(req));
        }
        let clone = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, clone);
        let limiter = self.limiter.clone();
        let deferred = async move {
            let outcome = decide.await;
            let quota = limiter.quota();
            let decision = limiter.settle(&key, &quota, outcome);
            if !decision.allowed {
                return Err(RateLimited::new(decision.retry_after).into());
            }
            ready.call(req).await.map_err(Into::into)
        };
        RateLimitFuture {
            kind: Kind::Deferred {
                fut: Box::pin(deferred),
            },
        }
    }
}

type BoxResponse<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

pin_project! {
    /// The response of a [`RateLimitService`].
    pub struct RateLimitFuture<F, T> {
        #[pin]
        kind: Kind<F, T>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, T> {
        Called { #[pin] fut: F },
        Deferred { fut: BoxResponse<T> },
        Limited { error: Option<RateLimited> },
    }
}

impl<F, T> RateLimitFuture<F, T> {
    fn called(fut: F) -> Self {
        RateLimitFuture {
            kind: Kind::Called { fut },
        }
    }

    fn limited(error: RateLimited) -> Self {
        RateLimitFuture {
            kind: Kind::Limited { error: Some(error) },
        }
    }
}

impl<F, T, E> Future for RateLimitFuture<F, T>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called { fut } => fut.poll(cx).map_err(Into::into),
            KindProj::Deferred { fut } => fut.as_mut().poll(cx),
            KindProj::Limited { error } => {
                let error = error.take().unwrap_or(RateLimited::new(Default::default()));
                Poll::Ready(Err(error.into()))
            }
        }
    }
}

impl<F, T> fmt::Debug for RateLimitFuture<F, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitFuture").finish_non_exhaustive()
    }
}
