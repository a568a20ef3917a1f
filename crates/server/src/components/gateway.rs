//! The gateway data plane, started from `[[listeners]]`, `[[routes]]` and
//! `[[upstreams]]`, reloaded when the config is, and drained on shutdown.

use std::sync::Arc;

use anyhow::Context as _;
use futures::StreamExt as _;
use trellis_gateway::{Gateway, GatewayHandle, GatewayOptions, Tracing};

use crate::directory::Directory;
use crate::up::Wiring;

/// Starts the gateway if any listener is configured; returns its handle.
pub async fn start(
    w: &mut Wiring<'_>,
    registry: Option<&Directory>,
) -> anyhow::Result<Option<Arc<GatewayHandle>>> {
    let config = w.config.gateway();
    if config.listeners.is_empty() {
        return Ok(None);
    }
    let followed: Vec<(String, String)> = config
        .upstreams
        .iter()
        .filter_map(|u| Some((u.name.clone(), u.service.clone()?)))
        // `service = "*"` upstreams ask the resolver per service themselves.
        .filter(|(_, service)| service != "*")
        .collect();
    let by_name = config
        .upstreams
        .iter()
        .find(|u| u.service.as_deref() == Some("*"));
    if let (None, Some(u)) = (registry, by_name) {
        anyhow::bail!(
            "upstream {:?} serves services by name (service = \"*\"), but the registry is disabled (registry.enabled = false)",
            u.name
        );
    }
    let registry = match (registry, followed.is_empty()) {
        (Some(r), _) => Some(r.clone()),
        (None, true) => None,
        (None, false) => anyhow::bail!(
            "upstream {:?} follows service {:?}, but the registry is disabled (registry.enabled = false)",
            followed[0].0,
            followed[0].1
        ),
    };
    let ready = w.readiness.register("gateway");
    let mut metrics = prometheus_client::registry::Registry::default();
    let provider = crate::telemetry::otlp::tracer_provider(&w.config.telemetry)?;
    let tracing = provider.as_ref().map(Tracing::new);
    let options = GatewayOptions {
        tracing,
        resolver: registry
            .clone()
            .map(|r| Arc::new(r) as Arc<dyn trellis_gateway::ServiceResolver>),
    };
    let handle = Gateway::start_with(config, &mut metrics, options)
        .await
        .context("cannot start the gateway")?;
    w.metrics.attach(metrics);
    let handle = Arc::new(handle);

    // Apply reloads: the server has already validated the file; the gateway
    // compiles it and swaps it in atomically, or keeps the old one.
    let mut live = w.live.subscribe();
    // Bumped after each reload the gateway applied, for the service feeds.
    let (reloaded, reloads) = tokio::sync::watch::channel(0u64);
    let reloading = handle.clone();
    let shutdown = w.shutdown.clone();
    w.spawn("gateway", async move {
        let stopped = shutdown.triggered();
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                () = &mut stopped => break,
                changed = live.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let config = live.borrow_and_update().gateway();
                    match reloading.reload(config).await {
                        Ok(()) => {
                            tracing::info!("gateway config reloaded");
                            reloaded.send_modify(|n| *n += 1);
                        }
                        Err(e) => tracing::error!(error = %e, "gateway reload refused; the previous config keeps serving"),
                    }
                }
            }
        }
        reloading.shutdown(shutdown.grace()).await;
        if let Some(provider) = provider {
            // Export what the drain produced; the SDK blocks while it flushes.
            let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            if let Ok(Err(e)) = flushed {
                tracing::warn!(error = %e, "could not flush traces at shutdown");
            }
        }
        Ok(())
    });
    if let Some(registry) = registry {
        for (upstream, service) in followed {
            let task = follow(
                registry.clone(),
                handle.clone(),
                upstream,
                service,
                reloads.clone(),
                w.shutdown.clone(),
            );
            w.spawn("gateway service feed", task);
        }
    }
    ready.set_ready();
    Ok(Some(handle))
}

/// Keeps an upstream's endpoints equal to the registry's served instances of
/// `service`. A reload may replace the upstream object, so the last known set
/// is pushed again to whatever upstream carries the name after each reload.
async fn follow(
    registry: Directory,
    gateway: Arc<GatewayHandle>,
    upstream: String,
    service: String,
    mut reloads: tokio::sync::watch::Receiver<u64>,
    shutdown: crate::shutdown::Shutdown,
) -> anyhow::Result<()> {
    {
        let feed = registry.follow(&service);
        tokio::pin!(feed);
        let stopped = shutdown.triggered();
        tokio::pin!(stopped);
        let mut last: Vec<(String, u32)> = Vec::new();
        loop {
            tokio::select! {
                () = &mut stopped => return Ok(()),
                next = feed.next() => match next {
                    Some(endpoints) => {
                        last = endpoints;
                        tracing::info!(%upstream, %service, endpoints = last.len(), "upstream follows the registry");
                    }
                    None => return Ok(()),
                },
                changed = reloads.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                }
            }
            if let Some(u) = gateway.upstream(&upstream) {
                u.set_endpoints(last.clone());
            }
        }
    }
}
