//! The CORS tower layer: preflights answered without calling the inner
//! service, other cross-origin requests passed through with CORS headers
//! added to (and any the upstream set replaced in) the response. The rules
//! themselves are [`CorsPolicy::decide`]'s.

use super::{apply_cors_headers, CorsDecision, CorsPolicy};
use http::header::HeaderMap;
use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// Applies a [`CorsPolicy`]. Put it outside the [`crate::AuthLayer`].
#[derive(Debug, Clone)]
pub struct CorsLayer {
    policy: Arc<CorsPolicy>,
}

impl CorsLayer {
    /// A layer applying `policy`.
    pub fn new(policy: CorsPolicy) -> Self {
        CorsLayer {
            policy: Arc::new(policy),
        }
    }
}

impl<S> Layer<S> for CorsLayer {
    type Service = Cors<S>;

    fn layer(&self, inner: S) -> Cors<S> {
        Cors {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// See [`CorsLayer`].
#[derive(Debug, Clone)]
pub struct Cors<S> {
    inner: S,
    policy: Arc<CorsPolicy>,
}

pin_project! {
    /// The future of [`Cors`].
    #[project = CorsFutureProj]
    pub enum CorsFuture<F, B> {
        /// A preflight answered here.
        Answered { response: Option<Response<B>> },
        /// A request passed on; `headers` replace the CORS headers of its
        /// response (`None`: not a cross-origin request, left alone).
        Forwarded { #[pin] future: F, headers: Option<HeaderMap> },
    }
}

impl<F, B, E> Future for CorsFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            CorsFutureProj::Answered { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => Poll::Pending,
            },
            CorsFutureProj::Forwarded { future, headers } => {
                let mut response = match future.poll(cx) {
                    Poll::Ready(Ok(response)) => response,
                    other => return other,
                };
                if let Some(headers) = headers.take() {
                    apply_cors_headers(response.headers_mut(), headers);
                }
                Poll::Ready(Ok(response))
            }
        }
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Cors<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: Default,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = CorsFuture<S::Future, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        match self.policy.decide(request.method(), request.headers()) {
            CorsDecision::NotCors => CorsFuture::Forwarded {
                future: self.inner.call(request),
                headers: None,
            },
            CorsDecision::Forward(headers) => CorsFuture::Forwarded {
                future: self.inner.call(request),
                headers: Some(headers),
            },
            CorsDecision::Preflight { allowed, headers } => {
                let mut response = Response::new(ResB::default());
                *response.status_mut() = if allowed {
                    StatusCode::NO_CONTENT
                } else {
                    StatusCode::FORBIDDEN
                };
                *response.headers_mut() = headers;
                CorsFuture::Answered {
                    response: Some(response),
                }
            }
        }
    }
}
