//! Retrying HTTP requests safely.
//!
//! Sending a request twice is only safe when doing it twice means the same
//! as doing it once: RFC 9110's idempotent methods (GET, HEAD, OPTIONS, PUT,
//! DELETE, TRACE), or a request whose `Idempotency-Key` lets the server
//! deduplicate. Anything else is sent exactly once unless configured
//! otherwise. A retried request's body is buffered up to a bound so it can be
//! replayed byte for byte; a larger body is streamed once and not retried.
//!
//! The [`Deadline`] in a request's extensions (set by an outer
//! [`Timeout`](crate::timeout::Timeout)) bounds the retry, and each attempt
//! carries its own, earlier, deadline to the layers below.
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use std::time::Duration;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use trellis_resilience::retry::http::{HttpRetryLayer, ReplayBody};
//! use trellis_resilience::retry::RetryConfig;
//! use trellis_resilience::timeout::TimeoutLayer;
//! use trellis_resilience::BoxError;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! // The upstream client receives `Request<ReplayBody<B>>`.
//! let upstream = service_fn(|_: Request<ReplayBody<Full<Bytes>>>| async {
//!     Ok::<_, BoxError>(Response::new(()))
//! });
//! let svc = ServiceBuilder::new()
//!     .layer(TimeoutLayer::http(Duration::from_secs(2)))
//!     .layer(HttpRetryLayer::new(RetryConfig::default()).body_limit(16 * 1024))
//!     .service(upstream);
//! let request = Request::put("http://orders/42").body(Full::new(Bytes::from("{}")))?;
//! assert_eq!(svc.oneshot(request).await?.status(), 200);
//! # Ok(())
//! # }
//! ```

pub use super::body::ReplayBody;

use super::{Retry, RetryConfig, RetryEvent, RetryLayer, RetryPolicy, RetrySnapshot};
use crate::classify::{Classify, HttpClassifier};
use crate::observe::EventStream;
use crate::timeout::Deadline;
use crate::BoxError;
use http::{HeaderMap, HeaderName, Method, Request};
use http_body::Body;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// Bodies up to this many bytes are buffered for replay by default (Envoy's
/// default per-request buffer limit is 1 MiB; a retry rarely needs that much).
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;

/// Which HTTP requests may be sent more than once.
#[derive(Debug, Clone)]
pub struct Idempotency {
    /// Retry any method (for upstreams known to deduplicate).
    pub any_method: bool,
    /// A header whose presence makes any method retryable; `None` to ignore keys.
    pub key_header: Option<HeaderName>,
}

impl Default for Idempotency {
    fn default() -> Self {
        Idempotency {
            any_method: false,
            key_header: Some(HeaderName::from_static("idempotency-key")),
        }
    }
}

impl Idempotency {
    /// Whether a request with this method and these headers may be retried.
    pub fn allows(&self, method: &Method, headers: &HeaderMap) -> bool {
        self.any_method
            || is_idempotent(method)
            || self
                .key_header
                .as_ref()
                .is_some_and(|key| headers.contains_key(key))
    }
}

/// RFC 9110 §9.2.2: methods whose repetition has the effect of one request.
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// The [`RetryPolicy`] for HTTP: idempotency rules, buffered bodies and
/// deadlines in extensions.
#[derive(Debug, Clone, Default)]
pub struct HttpReplay {
    pub idempotency: Idempotency,
}

impl<B> RetryPolicy<Request<ReplayBody<B>>> for HttpReplay {
    fn replay(&self, request: &Request<ReplayBody<B>>) -> Option<Request<ReplayBody<B>>> {
        if !self.idempotency.allows(request.method(), request.headers()) {
            return None;
        }
        let mut copy = Request::new(request.body().try_clone()?);
        *copy.method_mut() = request.method().clone();
        *copy.uri_mut() = request.uri().clone();
        *copy.version_mut() = request.version();
        *copy.headers_mut() = request.headers().clone();
        *copy.extensions_mut() = request.extensions().clone();
        Some(copy)
    }

    fn inherited_deadline(&self, request: &Request<ReplayBody<B>>) -> Option<Deadline> {
        Deadline::of(request)
    }

    fn set_deadline(&self, request: &mut Request<ReplayBody<B>>, deadline: Deadline) {
        request.extensions_mut().insert(deadline);
    }
}

/// Applies an [`HttpRetry`]: a [`Retry`] with HTTP classification,
/// idempotency rules and bounded body replay.
#[derive(Debug, Clone)]
pub struct HttpRetryLayer<C = HttpClassifier> {
    retry: RetryLayer<C, HttpReplay>,
    body_limit: usize,
}

impl HttpRetryLayer {
    /// Retries with `config`, classifying with [`HttpClassifier`].
    pub fn new(config: RetryConfig) -> Self {
        HttpRetryLayer {
            retry: RetryLayer::new(config)
                .classify(HttpClassifier::default())
                .policy(HttpReplay::default()),
            body_limit: DEFAULT_BODY_LIMIT,
        }
    }
}

impl<C> HttpRetryLayer<C> {
    /// Decides what is retryable with `classify`.
    pub fn classify<C2>(self, classify: C2) -> HttpRetryLayer<C2> {
        HttpRetryLayer {
            retry: self.retry.classify(classify),
            body_limit: self.body_limit,
        }
    }

    /// Which requests may be retried.
    pub fn idempotency(mut self, idempotency: Idempotency) -> Self {
        self.retry.policy.idempotency = idempotency;
        self
    }

    /// Buffers request bodies up to `bytes` for replay.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// Retry this crate's rejections like any failure (see
    /// [`RetryLayer::retry_rejections`]).
    pub fn retry_rejections(self, retry: bool) -> Self {
        HttpRetryLayer {
            retry: self.retry.retry_rejections(retry),
            ..self
        }
    }

    /// Reproducible jitter (see [`RetryLayer::seed`]).
    pub fn seed(self, seed: u64) -> Self {
        HttpRetryLayer {
            retry: self.retry.seed(seed),
            body_limit: self.body_limit,
        }
    }

    /// Events of every service this layer builds.
    pub fn events(&self) -> &EventStream<RetryEvent> {
        self.retry.events()
    }

    /// Counters of every service this layer builds.
    pub fn snapshot(&self) -> RetrySnapshot {
        self.retry.snapshot()
    }
}

impl<S, C: Clone> Layer<S> for HttpRetryLayer<C> {
    type Service = HttpRetry<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpRetry {
            retry: self.retry.layer(inner),
            body_limit: self.body_limit,
        }
    }
}

/// Retries HTTP requests; the inner service receives `Request<ReplayBody<B>>`.
#[derive(Debug)]
pub struct HttpRetry<S, C = HttpClassifier> {
    retry: Retry<S, C, HttpReplay>,
    body_limit: usize,
}

impl<S: Clone, C> Clone for HttpRetry<S, C> {
    fn clone(&self) -> Self {
        HttpRetry {
            retry: self.retry.clone(),
            body_limit: self.body_limit,
        }
    }
}

impl<S, C> HttpRetry<S, C> {
    /// Counters (shared with the layer's other services).
    pub fn snapshot(&self) -> RetrySnapshot {
        self.retry.snapshot()
    }

    /// This retry's events.
    pub fn events(&self) -> &EventStream<RetryEvent> {
        self.retry.events()
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

impl<S, C, B, Res> Service<Request<B>> for HttpRetry<S, C>
where
    S: Service<Request<ReplayBody<B>>, Response = Res> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    C: Classify<Res, BoxError> + Send + Sync + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    Res: Send + 'static,
{
    type Response = Res;
    type Error = BoxError;
    type Future = BoxFuture<Res>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.retry.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let (parts, body) = request.into_parts();
        let shared = &self.retry.shared;
        let retryable = shared.config.max_attempts > 1
            && shared
                .policy
                .idempotency
                .allows(&parts.method, &parts.headers);
        if !retryable {
            let request = Request::from_parts(parts, ReplayBody::streaming(body));
            return Box::pin(self.retry.call(request));
        }
        if body.is_end_stream() {
            let request = Request::from_parts(parts, ReplayBody::empty());
            return Box::pin(self.retry.call(request));
        }
        // Buffering takes time; the ready service waits for it in the future.
        let clone = self.retry.clone();
        let mut retry = std::mem::replace(&mut self.retry, clone);
        let limit = self.body_limit;
        Box::pin(async move {
            let body = ReplayBody::buffer(body, limit).await?;
            retry.call(Request::from_parts(parts, body)).await
        })
    }
}
