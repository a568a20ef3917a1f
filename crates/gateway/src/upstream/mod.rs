//! Upstreams: named endpoint sets that can change while serving, the
//! connection pool to them, load balancing ([`balance`]), active health
//! checks ([`health`]) and passive outlier detection ([`outlier`]).

mod balance;
mod directory;
mod endpoint;
mod health;
mod outlier;

pub use balance::EndpointSet;
pub(crate) use directory::ServiceDirectory;
pub use directory::ServiceResolver;
pub use endpoint::{Endpoint, InFlight};

use crate::body::Body;
use crate::config::{LbPolicy, OutlierDetectionConfig, UpstreamConfig, UpstreamProtocol};
use crate::metrics::UpstreamMetrics;
use arc_swap::ArcSwap;
use balance::{Balancer, HashSource};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::sync::Arc;
use tokio::time::Instant;

pub(crate) type HttpClient = Client<HttpConnector, Body>;

/// A named set of endpoints behind one balancing policy and connection pool.
///
/// The endpoint set is swapped atomically by [`Upstream::set_endpoints`]
/// (the registry feeds it), so picking an endpoint never takes a lock.
pub struct Upstream {
    name: Arc<str>,
    policy: LbPolicy,
    set: ArcSwap<EndpointSet>,
    balancer: Balancer,
    hash: Option<HashSource>,
    client: HttpClient,
    pool_limits: crate::h1::PoolLimits,
    protocol: UpstreamProtocol,
    max_requests_per_endpoint: Option<usize>,
    outlier: Option<OutlierDetectionConfig>,
    eject_lock: parking_lot::Mutex<()>,
    clock: Instant,
    /// Set once [`Upstream::set_endpoints`] has been called, i.e. a feed
    /// (the registry) has said what the endpoints are.
    fed: std::sync::atomic::AtomicBool,
    fed_notify: tokio::sync::Notify,
    pub(crate) metrics: UpstreamMetrics,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("policy", &self.policy)
            .finish()
    }
}

/// Why no endpoint could be picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PickError {
    /// No endpoint is configured, healthy and not ejected.
    NoEndpoint,
    /// Every available endpoint is at `max_requests_per_endpoint`.
    Overloaded,
}

impl Upstream {
    /// An upstream from its config; its active health checks start when
    /// [`Upstream::spawn_health_checks`] is called inside a tokio runtime.
    pub fn new(config: &UpstreamConfig, metrics: UpstreamMetrics) -> Upstream {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.pool.connect_timeout));
        connector.set_keepalive(Some(std::time::Duration::from_secs(60)));
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(config.pool.idle_timeout)
            .pool_max_idle_per_host(config.pool.max_idle_per_endpoint)
            .http2_only(config.protocol == UpstreamProtocol::Http2);
        let client = builder.build(connector);
        let upstream = Upstream {
            name: Arc::from(config.name.as_str()),
            policy: config.load_balancer.policy,
            set: ArcSwap::from_pointee(EndpointSet::default()),
            balancer: Balancer::new(config.load_balancer.policy),
            hash: config
                .load_balancer
                .hash_on
                .as_ref()
                .and_then(HashSource::from_config),
            client,
            pool_limits: crate::h1::PoolLimits {
                max_idle: config.pool.max_idle_per_endpoint,
                idle_timeout: config.pool.idle_timeout,
                connect_timeout: config.pool.connect_timeout,
            },
            protocol: config.protocol,
            max_requests_per_endpoint: config.pool.max_requests_per_endpoint,
            outlier: config.outlier_detection.clone(),
            eject_lock: parking_lot::Mutex::new(()),
            clock: Instant::now(),
            fed: std::sync::atomic::AtomicBool::new(false),
            fed_notify: tokio::sync::Notify::new(),
            metrics,
        };
        upstream.replace_endpoints(
            config
                .endpoints
                .iter()
                .map(|e| (e.address().to_owned(), e.weight())),
        );
        upstream
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn protocol(&self) -> UpstreamProtocol {
        self.protocol
    }

    /// Replaces the endpoint set while serving. Endpoints already known keep
    /// their live state (outstanding requests, latency, ejection); addresses
    /// that are not `host:port` are skipped with a warning.
    pub fn set_endpoints(&self, endpoints: impl IntoIterator<Item = (String, u32)>) {
        self.replace_endpoints(endpoints);
        self.fed.store(true, std::sync::atomic::Ordering::Release);
        self.fed_notify.notify_waiters();
    }

    /// Waits up to `max` for the first [`Upstream::set_endpoints`]; whether it came.
    pub(crate) async fn wait_fed(&self, max: std::time::Duration) -> bool {
        let notified = self.fed_notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.fed.load(std::sync::atomic::Ordering::Acquire) {
            return true;
        }
        tokio::time::timeout(max, notified).await.is_ok()
    }

    fn replace_endpoints(&self, endpoints: impl IntoIterator<Item = (String, u32)>) {
        let old = self.set.load();
        let mut next = Vec::new();
        for (address, weight) in endpoints {
            if let Some(e) = old
                .endpoints
                .iter()
                .find(|e| e.address() == address && e.weight() == weight.max(1))
            {
                next.push(e.clone());
            } else if let Some(e) = Endpoint::new(&address, weight) {
                next.push(Arc::new(e));
            } else {
                tracing::warn!(upstream = %self.name, %address, "skipping endpoint: not host:port");
            }
        }
        self.set
            .store(Arc::new(EndpointSet::new(next, self.policy)));
        self.metrics.update_ejected(self);
    }

    /// The current endpoint set.
    pub fn endpoints(&self) -> Arc<EndpointSet> {
        self.set.load_full()
    }

    /// Nanoseconds since the upstream was made, on tokio's clock (so tests can
    /// pause it); never 0, which means "not ejected".
    pub(crate) fn now(&self) -> u64 {
        self.clock.elapsed().as_nanos() as u64 + 1
    }

    /// Picks an endpoint for `req` and counts it as in flight there.
    pub fn pick<B>(&self, req: &http::Request<B>) -> Result<InFlight, PickError> {
        self.pick_for(req.uri(), req.headers())
    }

    /// [`Upstream::pick`] for a request with this target and these headers.
    pub fn pick_for(
        &self,
        uri: &http::Uri,
        headers: &http::HeaderMap,
    ) -> Result<InFlight, PickError> {
        let set = self.set.load();
        let now = self.now();
        let key = self.hash.as_ref().and_then(|h| h.hash(uri, headers));
        let endpoint = self
            .balancer
            .pick(&set, now, key)
            .ok_or(PickError::NoEndpoint)?;
        if let Some(max) = self.max_requests_per_endpoint {
            if endpoint.outstanding() >= max {
                // The policy's choice is full; any other endpoint with room will do.
                return set
                    .endpoints
                    .iter()
                    .find(|e| e.available(now) && e.outstanding() < max)
                    .map(|e| e.begin())
                    .ok_or(PickError::Overloaded);
            }
        }
        Ok(endpoint.begin())
    }

    /// Whether picking an endpoint reads a request's fields (a hash on a
    /// header or a cookie), so it must see them as the gateway sends them.
    pub(crate) fn picks_by_fields(&self) -> bool {
        matches!(
            self.hash,
            Some(HashSource::Header(_) | HashSource::Cookie(_))
        )
    }

    /// Pool limits for the native HTTP/1.1 engine's connections.
    pub(crate) fn pool_limits(&self) -> crate::h1::PoolLimits {
        self.pool_limits
    }

    pub(crate) fn client(&self) -> &HttpClient {
        &self.client
    }
}
