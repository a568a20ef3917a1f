//! The Trellis HTTP data plane: an **API gateway** and reverse proxy on hyper
//! and tower, and the ground the **backend-for-frontend** (a listener or route
//! set per frontend), **sidecar** and **sharding** (consistent hashing)
//! patterns stand on.
//!
//! - [`config`]: listeners, routes and upstreams, with validation that names
//!   the key at fault, and the documented route precedence.
//! - [`Gateway::start`] binds the listeners and serves; the returned
//!   [`GatewayHandle`] hot-reloads a new config atomically and drains
//!   gracefully on shutdown.
//! - [`upstream`]: endpoint sets that change while serving, load balancing
//!   (round robin, smooth weighted, power of two choices on outstanding
//!   requests or EWMA latency, consistent hashing), active health checks and
//!   passive outlier detection.
//! - Proxying per RFC 9110: hop-by-hop headers removed, `X-Forwarded-*`,
//!   `Forwarded`, `X-Request-Id` and `traceparent` set, bodies streamed
//!   (SSE, gRPC, WebSocket upgrades), limits against hostile clients, and the
//!   gateway's own errors as RFC 9457 problem details or gRPC statuses.
//! - Per-route policies: CORS (preflights answered by the gateway) and
//!   authentication from `trellis-auth`; rate limit, bulkhead, circuit
//!   breaker, retries and timeouts from `trellis-resilience`.
//! - Access log on the tracing target `trellis::access`; Prometheus metrics
//!   under `trellis_gateway_*`; with a [`Tracing`] (see
//!   [`Gateway::start_with_tracing`]) an OpenTelemetry `SERVER` span per
//!   request, parented by the client's `traceparent` and named in the one
//!   sent upstream.

pub mod body;
pub mod config;
mod cors;
mod framing;
mod h1;
mod listener;
pub mod metrics;
mod otel;
mod policy;
pub mod proxy;
mod route;
mod runtime;
mod tls;
pub mod upstream;
mod workers;

pub use config::GatewayConfig;
pub use otel::Tracing;
pub use proxy::GatewayError;
pub use tls::TlsError;
pub use upstream::ServiceResolver;

use arc_swap::ArcSwap;
use metrics::Metrics;
use runtime::Runtime;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use upstream::Upstream;

/// Why the gateway could not start or a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid gateway config: {0}")]
    Invalid(#[from] config::ConfigErrors),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("listener {listener}: cannot bind {address}: {source}")]
    Bind {
        listener: String,
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("the gateway must be started inside a tokio runtime")]
    NoRuntime,
    #[error("listeners cannot be added, removed, renamed, rebound or given other workers by a reload: {0}")]
    ListenersChanged(String),
    #[error("internal error compiling the config: {0}")]
    Internal(String),
}

/// The gateway data plane.
pub struct Gateway;

/// What an embedder adds to a gateway beyond its config; both are kept
/// across reloads.
#[derive(Default)]
pub struct GatewayOptions {
    /// Makes an OpenTelemetry span of every request.
    pub tracing: Option<Tracing>,
    /// Resolves the services that service-by-name upstreams (`service = "*"`)
    /// are asked for; a config with such an upstream needs one.
    pub resolver: Option<Arc<dyn ServiceResolver>>,
}

impl Gateway {
    /// Validates `config`, binds every listener and starts serving, with the
    /// metrics registered in `registry`. Must be called inside a tokio runtime.
    pub async fn start(
        config: GatewayConfig,
        registry: &mut prometheus_client::registry::Registry,
    ) -> Result<GatewayHandle, StartError> {
        Self::start_with_tracing(config, registry, None).await
    }

    /// [`Gateway::start`], making an OpenTelemetry span of every request
    /// with `tracing` (kept across reloads). Without it, nothing is traced.
    pub async fn start_with_tracing(
        config: GatewayConfig,
        registry: &mut prometheus_client::registry::Registry,
        tracing: Option<Tracing>,
    ) -> Result<GatewayHandle, StartError> {
        let options = GatewayOptions {
            tracing,
            ..GatewayOptions::default()
        };
        Self::start_with(config, registry, options).await
    }

    /// [`Gateway::start`] with everything the embedder may add.
    pub async fn start_with(
        config: GatewayConfig,
        registry: &mut prometheus_client::registry::Registry,
        options: GatewayOptions,
    ) -> Result<GatewayHandle, StartError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| StartError::NoRuntime)?;
        let metrics = Metrics::register(registry);
        let runtime = Runtime::build(
            config,
            &metrics,
            None,
            options.tracing.map(Arc::new),
            options.resolver,
        )
        .await?;
        // Every socket is bound here, so a bad address fails the start.
        let mut sockets = Vec::new();
        for l in &runtime.config.listeners {
            let bind_err = |source| StartError::Bind {
                listener: l.name.clone(),
                address: l.bind,
                source,
            };
            let bound = workers::bind(l.bind, l.workers.max(1), l.workers > 0).map_err(bind_err)?;
            sockets.push((l.name.clone(), l.workers, bound));
        }
        let shared = Arc::new(ArcSwap::from_pointee(runtime));
        let (stop, stop_rx) = watch::channel(None);
        let mut tasks = Vec::new();
        let mut threads = Vec::new();
        let mut addrs = Vec::new();
        for (index, (name, n, bound)) in sockets.into_iter().enumerate() {
            let addr = bound.addr;
            tracing::info!(listener = %name, address = %addr, workers = n, "gateway listening");
            addrs.push((name.clone(), addr));
            if n == 0 {
                for std in bound.sockets {
                    let socket = {
                        let _guard = handle.enter();
                        tokio::net::TcpListener::from_std(std)
                    }
                    .map_err(|source| StartError::Bind {
                        listener: name.clone(),
                        address: addr,
                        source,
                    })?;
                    let serve = listener::serve(
                        socket,
                        index,
                        shared.clone(),
                        metrics.clone(),
                        stop_rx.clone(),
                        1,
                    );
                    tasks.push(handle.spawn(serve));
                }
                continue;
            }
            for (i, std) in bound.sockets.into_iter().enumerate() {
                let worker = workers::Worker {
                    name: format!("trellis-gw-{name}-{i}"),
                    socket: std,
                    index,
                    shared: shared.clone(),
                    metrics: metrics.clone(),
                    stop: stop_rx.clone(),
                    share: n,
                };
                threads.push(worker.start().map_err(|source| StartError::Bind {
                    listener: name.clone(),
                    address: addr,
                    source,
                })?);
            }
        }
        Ok(GatewayHandle {
            shared,
            metrics,
            stop,
            tasks: parking_lot::Mutex::new(tasks),
            threads: parking_lot::Mutex::new(threads),
            addrs,
        })
    }
}

/// A running gateway: reload its config, feed its upstreams, shut it down.
pub struct GatewayHandle {
    shared: Arc<ArcSwap<Runtime>>,
    metrics: Metrics,
    stop: watch::Sender<Option<Duration>>,
    tasks: parking_lot::Mutex<Vec<JoinHandle<()>>>,
    /// Listener worker threads; each says when it has finished.
    threads: parking_lot::Mutex<Vec<tokio::sync::oneshot::Receiver<()>>>,
    addrs: Vec<(String, SocketAddr)>,
}

impl std::fmt::Debug for GatewayHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayHandle")
            .field("listeners", &self.addrs)
            .finish_non_exhaustive()
    }
}

impl GatewayHandle {
    /// The address a listener is bound to (useful with port 0).
    pub fn local_addr(&self, listener: &str) -> Option<SocketAddr> {
        self.addrs
            .iter()
            .find(|(n, _)| n == listener)
            .map(|(_, a)| *a)
    }

    /// The live upstream called `name`, e.g. to [`Upstream::set_endpoints`]
    /// from the registry. A reload that changes the upstream's config replaces
    /// it, so fetch it again after a reload.
    pub fn upstream(&self, name: &str) -> Option<Arc<Upstream>> {
        self.shared.load().upstreams.get(name).cloned()
    }

    /// Swaps in `config` atomically. It is validated and compiled first; on
    /// any error the running config keeps serving and the error says why.
    /// Requests already in flight finish on the config they started with.
    pub async fn reload(&self, config: GatewayConfig) -> Result<(), StartError> {
        let current = self.shared.load_full();
        let old: Vec<_> = current
            .config
            .listeners
            .iter()
            .map(|l| (&l.name, l.bind, l.workers))
            .collect();
        let new: Vec<_> = config
            .listeners
            .iter()
            .map(|l| (&l.name, l.bind, l.workers))
            .collect();
        if old != new {
            return Err(StartError::ListenersChanged(format!(
                "running {old:?}, new {new:?}"
            )));
        }
        let tracing = current.tracing.clone();
        let resolver = current.resolver.clone();
        let runtime =
            Runtime::build(config, &self.metrics, Some(&current), tracing, resolver).await?;
        self.shared.store(Arc::new(runtime));
        tracing::info!("gateway config reloaded");
        Ok(())
    }

    /// Stops accepting connections and waits up to `deadline` for open ones
    /// to finish their requests; whatever is left then is closed.
    pub async fn shutdown(&self, deadline: Duration) {
        let _ = self.stop.send(Some(deadline));
        let tasks = std::mem::take(&mut *self.tasks.lock());
        for t in tasks {
            let _ = t.await;
        }
        let threads = std::mem::take(&mut *self.threads.lock());
        for t in threads {
            let _ = t.await;
        }
    }
}
