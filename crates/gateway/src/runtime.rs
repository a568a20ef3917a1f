//! A config compiled into what serving needs: per listener its route table,
//! limits, TLS acceptor and connection builder; per upstream its live state.
//! A reload compiles a new runtime and swaps it in whole; requests already
//! running keep the one they started with.

use crate::config::{GatewayConfig, Limits, Protocol};
use crate::metrics::Metrics;
use crate::otel::Tracing;
use crate::policy::{self, RoutePolicies};
use crate::route::{CompiledRoute, RouteTable, RouteTarget};
use crate::upstream::{ServiceDirectory, ServiceResolver, Upstream};
use crate::StartError;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use std::collections::HashMap;
use std::sync::Arc;

/// A compiled route with the host it matches.
type HostedRoute = (Option<String>, Arc<CompiledRoute>);

/// One listener's serving state.
pub(crate) struct ListenerRuntime {
    pub(crate) name: Arc<str>,
    pub(crate) table: RouteTable,
    pub(crate) limits: Limits,
    pub(crate) tls: Option<tokio_rustls::TlsAcceptor>,
    pub(crate) builder: auto::Builder<TokioExecutor>,
    /// Request spans, when the embedder configured tracing.
    pub(crate) tracing: Option<Arc<Tracing>>,
    /// Whether plain HTTP/1.1 requests go through the native engine
    /// (`crate::h1`): a cleartext listener that speaks HTTP/1.1, without
    /// request tracing (spans are made on the hyper path).
    pub(crate) native_h1: bool,
}

/// A compiled config version.
pub(crate) struct Runtime {
    pub(crate) config: GatewayConfig,
    /// In the order of `config.listeners`, which a reload may not change.
    pub(crate) listeners: Vec<ListenerRuntime>,
    pub(crate) upstreams: HashMap<String, Arc<Upstream>>,
    /// Service-by-name upstreams (`service = "*"`), by config name.
    pub(crate) directories: HashMap<String, Arc<ServiceDirectory>>,
    pub(crate) tracing: Option<Arc<Tracing>>,
    pub(crate) resolver: Option<Arc<dyn ServiceResolver>>,
}

impl Runtime {
    /// Validates and compiles `config`. Must run inside a tokio runtime, as
    /// upstreams start their health checks here.
    ///
    /// Upstreams whose config is unchanged from `previous` are carried over
    /// with their pools, endpoint sets and ejection state.
    pub(crate) async fn build(
        config: GatewayConfig,
        metrics: &Metrics,
        previous: Option<&Runtime>,
        tracing: Option<Arc<Tracing>>,
        resolver: Option<Arc<dyn ServiceResolver>>,
    ) -> Result<Runtime, StartError> {
        config.validate()?;
        let mut upstreams = HashMap::new();
        let mut directories = HashMap::new();
        for u in &config.upstreams {
            if u.service.as_deref() == Some("*") {
                let resolver = resolver.clone().ok_or_else(|| {
                    StartError::Internal(format!(
                        "upstream {} serves services by name, but nothing resolves services here (no registry)",
                        u.name
                    ))
                })?;
                // Kept across reloads that leave it alone, with every service it learned.
                let kept = previous.and_then(|p| {
                    let old = p.config.upstreams.iter().find(|o| o.name == u.name)?;
                    (old == u)
                        .then(|| p.directories.get(&u.name).cloned())
                        .flatten()
                });
                let dir =
                    kept.unwrap_or_else(|| Arc::new(ServiceDirectory::new(u, metrics, resolver)));
                directories.insert(u.name.clone(), dir);
                continue;
            }
            let kept = previous.and_then(|p| {
                let old = p.config.upstreams.iter().find(|o| o.name == u.name)?;
                (old == u)
                    .then(|| p.upstreams.get(&u.name).cloned())
                    .flatten()
            });
            let up = match kept {
                Some(up) => up,
                None => {
                    let up = Arc::new(Upstream::new(u, metrics.upstream(&u.name)));
                    up.spawn_health_checks(u.health_check.as_ref());
                    up
                }
            };
            upstreams.insert(u.name.clone(), up);
        }
        let mut by_set: HashMap<&str, Vec<HostedRoute>> = HashMap::new();
        for r in &config.routes {
            let target = match (upstreams.get(&r.upstream), directories.get(&r.upstream)) {
                (Some(up), _) => RouteTarget::Upstream(up.clone()),
                (None, Some(dir)) => RouteTarget::Service {
                    directory: dir.clone(),
                    from: r.service_from.clone().ok_or_else(|| {
                        StartError::Internal(format!("route {}: service_from missing", r.name))
                    })?,
                },
                (None, None) => {
                    return Err(StartError::Internal(format!(
                        "route {}: upstream {} missing",
                        r.name, r.upstream
                    )))
                }
            };
            let mut compiled =
                CompiledRoute::compile(r, target, metrics.route(&r.name, &r.upstream))
                    .map_err(StartError::Internal)?;
            compiled.policies = build_policies(r)
                .await
                .map_err(|e| StartError::Internal(format!("route {}: {e}", r.name)))?;
            by_set
                .entry(r.route_set.as_str())
                .or_default()
                .push((r.matches.host.clone(), Arc::new(compiled)));
        }
        let mut listeners = Vec::new();
        for l in &config.listeners {
            let routes = by_set
                .get(l.route_set.as_str())
                .cloned()
                .unwrap_or_default();
            if routes.is_empty() {
                tracing::warn!(listener = %l.name, route_set = %l.route_set, "listener serves a route set without routes");
            }
            let tls = match &l.tls {
                Some(t) => Some(crate::tls::acceptor(t, &l.protocols)?),
                None => None,
            };
            let native_h1 =
                tls.is_none() && l.protocols.contains(&Protocol::Http1) && tracing.is_none();
            listeners.push(ListenerRuntime {
                name: Arc::from(l.name.as_str()),
                table: RouteTable::new(routes),
                limits: l.limits.clone(),
                tls,
                builder: connection_builder(&l.limits, &l.protocols),
                native_h1,
                tracing: tracing.clone(),
            });
        }
        Ok(Runtime {
            config,
            listeners,
            upstreams,
            directories,
            tracing,
            resolver,
        })
    }
}

/// A route's policies; its config was validated, so only I/O (a JWKS URL)
/// can still fail here.
async fn build_policies(r: &crate::config::Route) -> Result<RoutePolicies, String> {
    Ok(RoutePolicies {
        cors: r.cors.as_ref().map(policy::cors).transpose()?,
        auth: match &r.auth {
            Some(a) => Some(policy::authenticator(a).await?),
            None => None,
        },
        limiter: r.rate_limit.as_ref().map(policy::limiter).transpose()?,
        bulkhead: r.bulkhead.as_ref().map(policy::bulkhead).transpose()?,
        breaker: r
            .breaker
            .as_ref()
            .map(|b| policy::breaker(b, &r.name))
            .transpose()?,
    })
}

fn connection_builder(limits: &Limits, protocols: &[Protocol]) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(limits.header_read_timeout)
        // The read buffer bounds the request head (hyper answers 431 past it);
        // bodies stream through it in pieces.
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(limits.max_headers);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(1024);
    match (
        protocols.contains(&Protocol::Http1),
        protocols.contains(&Protocol::Http2),
    ) {
        (true, false) => b.http1_only(),
        (false, true) => b.http2_only(),
        _ => b,
    }
}
