//! One attempt at an endpoint, and retries of failed attempts: a request that
//! never reached an endpoint (no connection) is always retried; a request that
//! may have reached one only when its method is idempotent. Only requests
//! without a body are retried, since a streamed body cannot be replayed.
//! Backoff is exponential with full jitter, and a budget caps retries at a
//! share of recent requests so retries cannot multiply an outage.

use super::{classify, upstream_uri, GatewayError};
use crate::body::Body;
use crate::config::{RetryPolicy, UpstreamProtocol};
use crate::route::CompiledRoute;
use crate::upstream::{Endpoint, InFlight, Upstream};
use http::{Request, Response, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use trellis_resilience::classify::Outcome;

/// Budget window; counts older than this are forgotten.
const BUDGET_WINDOW: Duration = Duration::from_secs(10);
/// Retries always allowed per window, so a quiet route can still retry.
const BUDGET_FLOOR: u64 = 10;

/// A route's retry policy with its budget counters.
#[derive(Debug)]
pub(crate) struct RetryState {
    policy: RetryPolicy,
    epoch: Instant,
    window: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

impl RetryState {
    pub(crate) fn new(policy: &RetryPolicy) -> RetryState {
        RetryState {
            policy: policy.clone(),
            epoch: Instant::now(),
            window: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        }
    }

    fn roll_window(&self) {
        let w = self.epoch.elapsed().as_secs() / BUDGET_WINDOW.as_secs();
        if self.window.swap(w, Ordering::Relaxed) != w {
            self.requests.store(0, Ordering::Relaxed);
            self.retries.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a request against the budget window, for [`RetryState::after_attempt`].
    pub(crate) fn begin(&self) {
        self.roll_window();
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes a retry from the budget, if there is one left.
    fn take_retry(&self) -> bool {
        let requests = self.requests.load(Ordering::Relaxed) as f64;
        let allowed = BUDGET_FLOOR + (requests * self.policy.budget_percent / 100.0) as u64;
        self.retries.fetch_add(1, Ordering::Relaxed) < allowed
    }

    /// After attempt number `n` (from 1) ended in `outcome`: the pause
    /// before the next attempt, or `None` when there is none (not retriable,
    /// out of attempts, or out of budget).
    pub(crate) fn after_attempt(
        &self,
        route: &CompiledRoute,
        idempotent: bool,
        n: u32,
        outcome: Result<http::StatusCode, &GatewayError>,
    ) -> Option<Duration> {
        let retriable = match outcome {
            Err(GatewayError::UpstreamUnavailable { .. } | GatewayError::NoInstances) => true,
            Err(GatewayError::UpstreamTimeout | GatewayError::UpstreamError) => idempotent,
            Ok(status) => idempotent && self.policy.retry_on_status.contains(&status.as_u16()),
            Err(_) => false,
        };
        if !retriable || n >= self.policy.attempts || !self.take_retry() {
            return None;
        }
        route.metrics.retries.inc();
        Some(self.backoff(n - 1))
    }

    fn backoff(&self, retry: u32) -> Duration {
        let exp = self.policy.backoff.saturating_mul(1u32 << retry.min(16));
        let cap = exp.min(self.policy.max_backoff);
        cap.mul_f64(fastrand::f64())
    }
}

/// Sends `req` to the route's upstream, retrying as the route's policy allows.
pub(super) async fn forward(
    route: &CompiledRoute,
    upstream: &Upstream,
    req: Request<Body>,
    path_and_query: String,
) -> Result<Response<Incoming>, GatewayError> {
    let Some(retry) = route.retry.as_ref().filter(|_| req.body().is_end_stream()) else {
        return attempt(route, upstream, req, &path_and_query).await;
    };
    retry.begin();
    let (parts, _) = req.into_parts();
    let idempotent = parts.method.is_idempotent();
    let mut n = 0;
    loop {
        let mut req = Request::new(Body::empty());
        *req.method_mut() = parts.method.clone();
        *req.headers_mut() = parts.headers.clone();
        *req.version_mut() = parts.version;
        *req.extensions_mut() = parts.extensions.clone();
        let result = attempt(route, upstream, req, &path_and_query).await;
        n += 1;
        let outcome = result.as_ref().map(|r| r.status());
        let Some(pause) = retry.after_attempt(route, idempotent, n, outcome) else {
            return result;
        };
        tokio::time::sleep(pause).await;
    }
}

/// One attempt at one endpoint, recording the outcome for outlier detection
/// and the balancer's latency estimate.
async fn attempt(
    route: &CompiledRoute,
    upstream: &Upstream,
    mut req: Request<Body>,
    path_and_query: &str,
) -> Result<Response<Incoming>, GatewayError> {
    let attempt = Attempt::begin(route, upstream, req.uri(), req.headers())?;
    let endpoint = attempt.endpoint();
    *req.uri_mut() = upstream_uri(endpoint.authority(), path_and_query)?;
    *req.version_mut() = match upstream.protocol() {
        UpstreamProtocol::Http1 => Version::HTTP_11,
        UpstreamProtocol::Http2 => Version::HTTP_2,
    };
    let traced = req.extensions().get::<crate::otel::Traced>().is_some();
    let fut = upstream.client().request(req);
    let mut result = match route.per_try_timeout {
        Some(t) => match tokio::time::timeout(t, fut).await {
            Ok(r) => r.map_err(|e| classify(&e)),
            Err(_) => Err(GatewayError::UpstreamTimeout),
        },
        None => fut.await.map_err(|e| classify(&e)),
    };
    if let (true, Ok(resp)) = (traced, &mut result) {
        let endpoint = crate::otel::UpstreamEndpoint(endpoint.authority().clone());
        resp.extensions_mut().insert(endpoint);
    }
    attempt.finish(result.as_ref().map(|r| r.status()));
    result
}

/// The bookkeeping of one attempt, shared by both HTTP/1 engines: the
/// endpoint picked and counted in flight, the breaker's permit, and the
/// start time; [`Attempt::finish`] records the outcome.
pub(crate) struct Attempt<'r> {
    route: &'r CompiledRoute,
    upstream: &'r Upstream,
    in_flight: InFlight,
    breaker: Option<trellis_resilience::breaker::Permit<'r>>,
    started: Instant,
}

impl<'r> Attempt<'r> {
    /// Picks an endpoint for a request with this target and headers, and
    /// takes a breaker permit when the route has a breaker.
    pub(crate) fn begin(
        route: &'r CompiledRoute,
        upstream: &'r Upstream,
        uri: &http::Uri,
        headers: &http::HeaderMap,
    ) -> Result<Attempt<'r>, GatewayError> {
        let in_flight = upstream.pick_for(uri, headers).map_err(|e| match e {
            // Nothing to pick from a service the request named: say so.
            crate::upstream::PickError::NoEndpoint
                if matches!(route.target, crate::route::RouteTarget::Service { .. }) =>
            {
                GatewayError::NoInstances
            }
            crate::upstream::PickError::NoEndpoint => {
                GatewayError::UpstreamUnavailable { retry_after: None }
            }
            crate::upstream::PickError::Overloaded => GatewayError::UpstreamOverloaded,
        })?;
        let breaker = match &route.policies.breaker {
            Some(b) => Some(b.try_acquire().map_err(|open| GatewayError::CircuitOpen {
                retry_after: open.retry_after(),
            })?),
            None => None,
        };
        Ok(Attempt {
            route,
            upstream,
            in_flight,
            breaker,
            started: Instant::now(),
        })
    }

    pub(crate) fn endpoint(&self) -> &Arc<Endpoint> {
        self.in_flight.endpoint()
    }

    /// Records how the attempt ended: a response with this status, or an error.
    pub(crate) fn finish(self, outcome: Result<http::StatusCode, &GatewayError>) {
        let latency = self.started.elapsed();
        let route = self.route;
        if let Some(permit) = self.breaker {
            let failed = match outcome {
                Ok(status) => status.is_server_error(),
                Err(GatewayError::PayloadTooLarge | GatewayError::BadRequest) => false,
                Err(_) => true,
            };
            permit.record_with_duration(
                if failed {
                    Outcome::failure()
                } else {
                    Outcome::success()
                },
                latency,
            );
            if let Some(b) = &route.policies.breaker {
                route.metrics.breaker_state(b.state());
            }
        }
        let endpoint = self.in_flight.endpoint();
        match outcome {
            Ok(status) if status.is_server_error() => {
                self.upstream.record_failure(endpoint, latency)
            }
            Ok(_) => self.upstream.record_success(endpoint, latency),
            // The client's body broke the limit, or the client went away
            // mid-request: not the endpoint's fault.
            Err(GatewayError::PayloadTooLarge | GatewayError::BadRequest) => {}
            Err(e) => {
                tracing::debug!(
                    upstream = self.upstream.name(),
                    endpoint = endpoint.address(),
                    error = e.code(),
                    "attempt failed"
                );
                self.upstream.record_failure(endpoint, latency)
            }
        }
    }
}
