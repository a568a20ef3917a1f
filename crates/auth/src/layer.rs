//! The authenticator as a tower layer. A refused request is answered here
//! with a `401` and never reaches the inner service; an accepted one reaches
//! it rewritten (see [`Authenticator::authenticate`]).

use crate::authenticator::Authenticator;
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// The error type of [`AuthBody`], as in tower's own middleware.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

pin_project! {
    /// The response body of [`AuthService`] and [`crate::cors::Cors`]:
    /// either the inner service's body or one produced here (a problem
    /// document, an empty preflight answer). `Default` is the empty local body.
    #[project = AuthBodyProj]
    pub enum AuthBody<B> {
        /// The inner service's body, untouched.
        Inner { #[pin] body: B },
        /// A body made by this crate.
        Local { #[pin] body: Full<Bytes> },
    }
}

impl<B> AuthBody<B> {
    /// Wraps the inner service's body.
    pub fn inner(body: B) -> Self {
        AuthBody::Inner { body }
    }

    /// A body made here.
    pub fn local(bytes: Bytes) -> Self {
        AuthBody::Local {
            body: Full::new(bytes),
        }
    }
}

impl<B> Default for AuthBody<B> {
    fn default() -> Self {
        AuthBody::local(Bytes::new())
    }
}

impl<B> Body for AuthBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            AuthBodyProj::Inner { body } => body.poll_frame(cx).map_err(Into::into),
            AuthBodyProj::Local { body } => body.poll_frame(cx).map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            AuthBody::Inner { body } => body.is_end_stream(),
            AuthBody::Local { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            AuthBody::Inner { body } => body.size_hint(),
            AuthBody::Local { body } => body.size_hint(),
        }
    }
}

/// Applies an [`Authenticator`] to every request. Put it inside any CORS
/// layer, so preflights (which carry no credentials) are answered first and
/// `401`s still get CORS headers.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    authenticator: Arc<Authenticator>,
}

impl AuthLayer {
    /// A layer sharing `authenticator` (and so its JWKS caches) among all services it makes.
    pub fn new(authenticator: Arc<Authenticator>) -> Self {
        AuthLayer { authenticator }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            authenticator: self.authenticator.clone(),
        }
    }
}

/// See [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    authenticator: Arc<Authenticator>,
}

impl<S> AuthService<S> {
    /// The authenticator in use.
    pub fn authenticator(&self) -> &Arc<Authenticator> {
        &self.authenticator
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for AuthService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send,
    ReqB: Send + 'static,
    ResB: 'static,
{
    type Response = Response<AuthBody<ResB>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        // The ready service is the one that must be called: take it and leave a clone.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let authenticator = self.authenticator.clone();
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            match authenticator.authenticate(&mut parts).await {
                Ok(_) => {
                    let response = inner.call(Request::from_parts(parts, body)).await?;
                    Ok(response.map(AuthBody::inner))
                }
                Err(error) => {
                    tracing::debug!(
                        reason = %error,
                        code = error.code().as_str(),
                        method = %parts.method,
                        path = parts.uri.path(),
                        "request refused by auth"
                    );
                    let response = authenticator.reject(&error);
                    Ok(response.map(|body| AuthBody::Local { body }))
                }
            }
        })
    }
}
