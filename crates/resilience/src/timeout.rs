//! Timeout: a deadline on a call, with a typed [`Elapsed`] error.
//!
//! A deadline is only useful if everything below it knows about it: a
//! per-try timeout inside a retry must never outlive the caller's overall
//! deadline, and an upstream client should not start a connect it cannot
//! finish in time. So a deadline is a value, [`Deadline`], that a
//! [`Propagation`] reads from and writes into the request — for HTTP, the
//! request's extensions ([`HttpExtensions`]). A [`Timeout`] takes the
//! earlier of its own deadline and the one it inherited, and hands that on.
//!
//! Plain requests carry nothing ([`Local`]): the timeout then simply bounds
//! the call, exactly like `tower::timeout::Timeout`.

use crate::observe::EventStream;
use crate::BoxError;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

/// A call that did not complete before its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, thiserror::Error)]
#[error("deadline elapsed")]
pub struct Elapsed;

/// The instant by which a call must complete, carried with the request so
/// that inner layers (a retry's per-try timeout, an upstream client) never
/// work past it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline(Instant);

impl Deadline {
    /// A deadline at `instant`.
    pub fn at(instant: Instant) -> Self {
        Deadline(instant)
    }

    /// A deadline `timeout` from now (on tokio's clock, so a paused test clock applies).
    pub fn after(timeout: Duration) -> Self {
        Deadline(Instant::now() + timeout)
    }

    /// When the deadline falls.
    pub fn instant(self) -> Instant {
        self.0
    }

    /// Time left until the deadline; zero once it has passed.
    pub fn remaining(self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    /// Whether the deadline has passed.
    pub fn is_expired(self) -> bool {
        Instant::now() >= self.0
    }

    /// The earlier of this deadline and `other`, if any.
    pub fn min_with(self, other: Option<Deadline>) -> Deadline {
        match other {
            Some(other) if other < self => other,
            _ => self,
        }
    }

    /// The deadline an outer layer put on this HTTP request, if any.
    #[cfg(feature = "http")]
    pub fn of<B>(request: &http::Request<B>) -> Option<Deadline> {
        request.extensions().get::<Deadline>().copied()
    }
}

/// How a deadline travels with a request of type `Req`.
pub trait Propagation<Req> {
    /// The deadline an outer layer set on this request.
    fn deadline(&self, request: &Req) -> Option<Deadline>;
    /// Tells inner layers the deadline of this request.
    fn set_deadline(&self, request: &mut Req, deadline: Deadline);
}

/// Requests that carry no deadline: a timeout bounds only its own call.
#[derive(Debug, Clone, Copy, Default)]
pub struct Local;

impl<Req> Propagation<Req> for Local {
    fn deadline(&self, _: &Req) -> Option<Deadline> {
        None
    }
    fn set_deadline(&self, _: &mut Req, _: Deadline) {}
}

/// HTTP requests carry their [`Deadline`] in their extensions.
#[cfg(feature = "http")]
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpExtensions;

#[cfg(feature = "http")]
impl<B> Propagation<http::Request<B>> for HttpExtensions {
    fn deadline(&self, request: &http::Request<B>) -> Option<Deadline> {
        Deadline::of(request)
    }
    fn set_deadline(&self, request: &mut http::Request<B>, deadline: Deadline) {
        request.extensions_mut().insert(deadline);
    }
}

/// What a timeout reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutEvent {
    /// A call ran out of time; `inherited` when the deadline that fell was an
    /// outer layer's, shorter than this timeout.
    Elapsed { timeout: Duration, inherited: bool },
}

/// Applies a [`Timeout`] to a service.
#[derive(Debug, Clone)]
pub struct TimeoutLayer<P = Local> {
    timeout: Duration,
    propagation: P,
    events: EventStream<TimeoutEvent>,
}

impl TimeoutLayer<Local> {
    /// Fails a call that takes longer than `timeout` with [`Elapsed`].
    pub fn new(timeout: Duration) -> Self {
        TimeoutLayer {
            timeout,
            propagation: Local,
            events: EventStream::default(),
        }
    }
}

#[cfg(feature = "http")]
impl TimeoutLayer<HttpExtensions> {
    /// A timeout for HTTP requests that honours a [`Deadline`] already in the
    /// request's extensions and puts the effective one there for inner layers.
    pub fn http(timeout: Duration) -> Self {
        TimeoutLayer::new(timeout).propagation(HttpExtensions)
    }
}

impl<P> TimeoutLayer<P> {
    /// Carries deadlines with `propagation` instead.
    pub fn propagation<P2>(self, propagation: P2) -> TimeoutLayer<P2> {
        TimeoutLayer {
            timeout: self.timeout,
            propagation,
            events: self.events,
        }
    }

    /// Events of every service this layer builds.
    pub fn events(&self) -> &EventStream<TimeoutEvent> {
        &self.events
    }
}

impl<S, P: Clone> Layer<S> for TimeoutLayer<P> {
    type Service = Timeout<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Timeout {
            inner,
            propagation: self.propagation.clone(),
            shared: Arc::new(Shared {
                timeout: self.timeout,
                events: self.events.clone(),
            }),
        }
    }
}

/// What every clone shares, and what a timed-out call reports through.
#[derive(Debug)]
struct Shared {
    timeout: Duration,
    events: EventStream<TimeoutEvent>,
}

/// Fails a call with [`Elapsed`] when it outlives its deadline: its own
/// timeout, or an earlier one it inherited.
#[derive(Debug)]
pub struct Timeout<S, P = Local> {
    inner: S,
    propagation: P,
    shared: Arc<Shared>,
}

impl<S: Clone, P: Clone> Clone for Timeout<S, P> {
    /// A clone gets its own `Arc` (to the same event stream): each call
    /// clones the `Arc` into its future, and clones serving different
    /// threads would otherwise bounce one reference count between cores.
    fn clone(&self) -> Self {
        Timeout {
            inner: self.inner.clone(),
            propagation: self.propagation.clone(),
            shared: Arc::new(Shared {
                timeout: self.shared.timeout,
                events: self.shared.events.clone(),
            }),
        }
    }
}

impl<S> Timeout<S, Local> {
    /// Wraps `inner` with a plain timeout.
    pub fn new(inner: S, timeout: Duration) -> Self {
        TimeoutLayer::new(timeout).layer(inner)
    }
}

impl<S, P> Timeout<S, P> {
    /// This timeout's events (shared by every clone and every service of its layer).
    pub fn events(&self) -> &EventStream<TimeoutEvent> {
        &self.shared.events
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, P, Req> Service<Req> for Timeout<S, P>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    P: Propagation<Req>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, mut request: Req) -> Self::Future {
        let own = Deadline(Instant::now() + self.shared.timeout);
        let deadline = own.min_with(self.propagation.deadline(&request));
        let inherited = deadline != own;
        if !inherited {
            self.propagation.set_deadline(&mut request, deadline);
        }
        ResponseFuture {
            inner: self.inner.call(request),
            deadline: deadline.0,
            sleep: None,
            shared: Arc::clone(&self.shared),
            inherited,
        }
    }
}

pin_project! {
    /// The response of a [`Timeout`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        deadline: Instant,
        // Armed only when the call first has to wait: a call that completes
        // on its first poll never touches the timer wheel.
        #[pin]
        sleep: Option<Sleep>,
        shared: Arc<Shared>,
        inherited: bool,
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(result) = this.inner.poll(cx) {
            return Poll::Ready(result.map_err(Into::into));
        }
        if this.sleep.is_none() {
            this.sleep
                .set(Some(tokio::time::sleep_until(*this.deadline)));
        }
        let Some(sleep) = this.sleep.as_pin_mut() else {
            return Poll::Pending;
        };
        match sleep.poll(cx) {
            Poll::Ready(()) => {
                this.shared.events.emit(TimeoutEvent::Elapsed {
                    timeout: this.shared.timeout,
                    inherited: *this.inherited,
                });
                Poll::Ready(Err(Elapsed.into()))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
