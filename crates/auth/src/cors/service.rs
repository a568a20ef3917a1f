//! The CORS tower layer: preflights answered without calling the inner
//! service, other cross-origin requests passed through with CORS headers
//! added to (and any the upstream set replaced in) the response.

use super::CorsPolicy;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

const CORS_RESPONSE_HEADERS: [header::HeaderName; 4] = [
    header::ACCESS_CONTROL_ALLOW_ORIGIN,
    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
    header::ACCESS_CONTROL_EXPOSE_HEADERS,
    header::ACCESS_CONTROL_MAX_AGE,
];

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
                let Some(headers) = headers.as_mut() else {
                    return Poll::Ready(Ok(response));
                };
                let target = response.headers_mut();
                for name in CORS_RESPONSE_HEADERS {
                    target.remove(&name);
                }
                for (name, value) in headers.drain() {
                    if let Some(name) = name {
                        if name == header::VARY {
                            append_vary(target, value);
                        } else {
                            target.insert(name, value);
                        }
                    }
                }
                Poll::Ready(Ok(response))
            }
        }
    }
}

fn append_vary(headers: &mut HeaderMap, value: HeaderValue) {
    let already = headers.get_all(header::VARY).iter().any(|v| {
        v.to_str()
            .map(|s| {
                s.split(',')
                    .any(|p| p.trim() == "*" || p.trim().eq_ignore_ascii_case("origin"))
            })
            .unwrap_or(false)
    });
    if !already {
        headers.append(header::VARY, value);
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
        let Some(origin) = request.headers().get(header::ORIGIN).cloned() else {
            // Not a cross-origin request: nothing to do.
            return CorsFuture::Forwarded {
                future: self.inner.call(request),
                headers: None,
            };
        };
        let allowed = origin.to_str().is_ok_and(|o| self.policy.allows_origin(o));
        let is_preflight = request.method() == Method::OPTIONS
            && request
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        if is_preflight {
            return CorsFuture::Answered {
                response: Some(self.preflight(&request, &origin, allowed)),
            };
        }
        let mut headers = HeaderMap::new();
        if allowed {
            self.allow_origin_headers(&mut headers, &origin);
            if let Some(expose) = &self.policy.expose_headers {
                headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
            }
        } else {
            headers.insert(header::VARY, HeaderValue::from_static("origin"));
        }
        CorsFuture::Forwarded {
            future: self.inner.call(request),
            headers: Some(headers),
        }
    }
}

impl<S> Cors<S> {
    fn allow_origin_headers(&self, headers: &mut HeaderMap, origin: &HeaderValue) {
        if self.policy.any_origin && !self.policy.credentials {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
        } else {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            headers.insert(header::VARY, HeaderValue::from_static("origin"));
        }
        if self.policy.credentials {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }

    fn preflight<ReqB, ResB: Default>(
        &self,
        request: &Request<ReqB>,
        origin: &HeaderValue,
        allowed: bool,
    ) -> Response<ResB> {
        let policy = &self.policy;
        let requested_method = request
            .headers()
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let requested_headers: Vec<String> = request
            .headers()
            .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        let permitted = allowed
            && policy.allows_method(requested_method)
            && requested_headers.iter().all(|h| policy.allows_header(h));

        let mut response = Response::new(ResB::default());
        *response.status_mut() = if permitted {
            StatusCode::NO_CONTENT
        } else {
            StatusCode::FORBIDDEN
        };
        let headers = response.headers_mut();
        headers.insert(
            header::VARY,
            HeaderValue::from_static(
                "origin, access-control-request-method, access-control-request-headers",
            ),
        );
        if !permitted {
            return response;
        }
        let mut cors = HeaderMap::new();
        self.allow_origin_headers(&mut cors, origin);
        cors.remove(header::VARY);
        headers.extend(cors);
        let methods = if policy.any_method {
            HeaderValue::from_str(requested_method).unwrap_or_else(|_| policy.allow_methods.clone())
        } else {
            policy.allow_methods.clone()
        };
        headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, methods);
        if policy.any_header {
            if !requested_headers.is_empty() {
                if let Ok(value) = HeaderValue::from_str(&requested_headers.join(", ")) {
                    headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, value);
                }
            }
        } else if let Some(allow) = &policy.allow_headers {
            headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allow.clone());
        }
        if let Some(max_age) = &policy.max_age {
            headers.insert(header::ACCESS_CONTROL_MAX_AGE, max_age.clone());
        }
        response
    }
}
